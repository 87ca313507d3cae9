//! Conformance of kubesim against real kubectl binaries: 1.27 (SPDY exec/cp/port-forward), 1.32
//! and 1.33 (WebSocket v5 exec/cp, SPDY-over-WebSocket port-forward, protobuf request bodies for
//! typed clients).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use kubesim::{Cluster, ClusterOptions, Scenario};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const VERSIONS: &[&str] = &["1.27", "1.32", "1.33"];

fn kubectl_bin(version: &str) -> PathBuf {
    PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.{version}"))
}

/// Runs kubectl with only the given kubeconfig (HOME points into the cluster's state dir so no
/// user config or cache leaks in), feeding `stdin`, with a timeout.
async fn kubectl_in(
    version: &str,
    kubeconfig: &Path,
    home: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Output {
    let mut cmd = tokio::process::Command::new(kubectl_bin(version));
    cmd.args(args)
        .env_clear()
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .env("PATH", "/usr/bin:/bin")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning kubectl {version}: {e}"));
    if let Some(data) = stdin {
        let mut w = child.stdin.take().expect("piped stdin");
        let data = data.to_vec();
        tokio::spawn(async move {
            let _ = w.write_all(&data).await;
            let _ = w.shutdown().await;
        });
    }
    match tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await {
        Ok(out) => out.expect("waiting for kubectl"),
        Err(_) => panic!("kubectl {version} {args:?} timed out"),
    }
}

async fn kubectl(c: &Cluster, version: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    kubectl_in(version, c.kubeconfig(), c.state_dir(), args, stdin).await
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(version: &str, args: &[&str], out: &Output) -> String {
    assert!(
        out.status.success(),
        "kubectl {version} {args:?} failed ({:?}): stdout={} stderr={}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

async fn demo() -> Cluster {
    let c = Cluster::start(ClusterOptions {
        scenario: Scenario::Demo,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    c.wait_for_pods_running(Duration::from_secs(60))
        .await
        .expect("demo pods run");
    c
}

/// Every regular file under `root` (symlinks excluded: `kubectl cp` skips them), relative.
fn regular_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readable dir") {
            let e = e.expect("dir entry");
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(
                    e.path()
                        .strip_prefix(root)
                        .expect("under root")
                        .to_path_buf(),
                );
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_pods_and_pvcs() {
    let c = demo().await;
    let demo_pods = [
        ("shop", "orders-db-0"),
        ("shop", "storefront-a"),
        ("payments", "ledger-0"),
        ("inventory", "stock-db-0"),
        ("edge", "edge-cache-0"),
        ("batch", "report-writer"),
        ("ambient", "events-0"),
    ];
    for v in VERSIONS {
        let args = ["get", "pods", "-A"];
        let out = ok(v, &args, &kubectl(&c, v, &args, None).await);
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
        assert_eq!(
            header,
            ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"],
            "kubectl {v}"
        );
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
        for (ns, name) in demo_pods {
            let row = rows
                .iter()
                .find(|r| r[0] == ns && r[1] == name)
                .unwrap_or_else(|| panic!("kubectl {v}: {ns}/{name} missing from:\n{out}"));
            assert_eq!(row[3], "Running", "kubectl {v}: {row:?}");
            let (ready, total) = row[2].split_once('/').expect("READY is n/m");
            assert_eq!(ready, total, "kubectl {v}: {row:?} not all ready");
        }
        assert_eq!(
            rows.len(),
            c.objects("pods", None).len(),
            "kubectl {v}: one row per pod"
        );

        let args = ["get", "pvc", "-n", "shop", "-o", "json"];
        let out = ok(v, &args, &kubectl(&c, v, &args, None).await);
        let list: Value = serde_json::from_str(&out).expect("kubectl -o json is JSON");
        assert_eq!(list["kind"], "List", "kubectl {v}");
        let pvc = list["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|p| p["metadata"]["name"] == "data-orders-db-0")
            .unwrap_or_else(|| panic!("kubectl {v}: data-orders-db-0 missing"));
        assert_eq!(pvc["status"]["phase"], "Bound", "kubectl {v}");
        assert!(
            pvc["spec"]["volumeName"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "kubectl {v}: bound PVC names its volume"
        );

        // The table printer path (server-side Table) for PVCs too.
        let args = ["get", "pvc", "data-orders-db-0", "-n", "shop"];
        let out = ok(v, &args, &kubectl(&c, v, &args, None).await);
        let row = out.lines().nth(1).expect("one row");
        assert!(
            row.starts_with("data-orders-db-0") && row.contains("Bound"),
            "kubectl {v}: {out}"
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_exit_codes_stdout_and_stdin() {
    let c = demo().await;
    let vol = c.volume_path("shop", "data-orders-db-0");
    let rel = regular_files(&vol)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".csv"))
        .expect("a csv file in the demo volume");
    let host_bytes = std::fs::read(vol.join(&rel)).expect("host file");
    assert!(!host_bytes.is_empty());
    let in_pod = format!("/var/lib/db/{}", rel.display());
    let big: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for v in VERSIONS {
        let args = [
            "exec",
            "-n",
            "shop",
            "orders-db-0",
            "-c",
            "db",
            "--",
            "sh",
            "-c",
            "exit 3",
        ];
        let out = kubectl(&c, v, &args, None).await;
        assert_eq!(
            out.status.code(),
            Some(3),
            "kubectl {v} exec exit 3: stderr={}",
            text(&out.stderr)
        );

        let args = [
            "exec",
            "-n",
            "shop",
            "orders-db-0",
            "-c",
            "db",
            "--",
            "cat",
            &in_pod,
        ];
        let out = kubectl(&c, v, &args, None).await;
        ok(v, &args, &out);
        assert!(
            out.stdout == host_bytes,
            "kubectl {v}: cat {in_pod} gave {} bytes, host file has {}",
            out.stdout.len(),
            host_bytes.len()
        );

        // stderr is its own stream and a command-not-found is exit 127.
        let args = [
            "exec",
            "-n",
            "shop",
            "orders-db-0",
            "-c",
            "db",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 0",
        ];
        let out = kubectl(&c, v, &args, None).await;
        assert_eq!(ok(v, &args, &out), "out\n", "kubectl {v}");
        assert_eq!(text(&out.stderr), "err\n", "kubectl {v}");

        let args = [
            "exec",
            "-i",
            "-n",
            "shop",
            "orders-db-0",
            "-c",
            "db",
            "--",
            "sh",
            "-c",
            "cat > /tmp/stdin-check && wc -c < /tmp/stdin-check && sha256sum /tmp/stdin-check",
        ];
        let out = kubectl(&c, v, &args, Some(&big)).await;
        let s = ok(v, &args, &out);
        let mut lines = s.lines();
        assert_eq!(
            lines.next().map(str::trim),
            Some("3145728"),
            "kubectl {v}: {s}"
        );
        let want = {
            use sha2::Digest;
            let d = sha2::Sha256::digest(&big);
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        assert!(
            lines.next().is_some_and(|l| l.starts_with(&want)),
            "kubectl {v}: sha256 mismatch: {s}"
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_both_ways_is_byte_identical() {
    let c = demo().await;
    let vol = c.volume_path("shop", "data-orders-db-0");
    let host_files = regular_files(&vol.join("exports"));
    assert!(host_files.len() > 3, "demo exports has files");
    let work = tempfile::tempdir().expect("tempdir");
    let upload: Vec<u8> = (0..(1024 * 1024 + 17) as u32)
        .map(|i| (i.wrapping_mul(40503) >> 7) as u8)
        .collect();
    let up_path = work.path().join("upload.bin");
    std::fs::write(&up_path, &upload).expect("write upload");
    for v in VERSIONS {
        // Pod → local: a directory tree with unicode and space names.
        let dest = work.path().join(format!("exports-{v}"));
        let args = [
            "cp",
            "-c",
            "db",
            "shop/orders-db-0:/var/lib/db/exports",
            dest.to_str().expect("utf-8"),
        ];
        ok(v, &args, &kubectl(&c, v, &args, None).await);
        assert_eq!(regular_files(&dest), host_files, "kubectl {v}: same files");
        for f in &host_files {
            let a = std::fs::read(vol.join("exports").join(f)).expect("host file");
            let b = std::fs::read(dest.join(f)).expect("copied file");
            assert!(a == b, "kubectl {v}: {} differs", f.display());
        }

        // Local → pod (into the volume), then compare on the host side.
        let target = format!("shop/orders-db-0:/var/lib/db/upload-{v}.bin");
        let args = [
            "cp",
            "-c",
            "db",
            up_path.to_str().expect("utf-8"),
            target.as_str(),
        ];
        ok(v, &args, &kubectl(&c, v, &args, None).await);
        let landed = std::fs::read(vol.join(format!("upload-{v}.bin"))).expect("uploaded file");
        assert!(landed == upload, "kubectl {v}: uploaded bytes differ");
        // And back out again.
        let back = work.path().join(format!("back-{v}.bin"));
        let args = [
            "cp",
            "-c",
            "db",
            target.as_str(),
            back.to_str().expect("utf-8"),
        ];
        let out = kubectl(&c, v, &args, None).await;
        ok(v, &args, &out);
        // kubectl cp exits 0 on an empty tar stream, so say what it printed when nothing landed.
        let copied = std::fs::read(&back).unwrap_or_else(|e| {
            panic!(
                "kubectl {v}: round trip wrote nothing at {} ({e}); stdout={} stderr={}",
                back.display(),
                text(&out.stdout),
                text(&out.stderr)
            )
        });
        assert!(copied == upload, "kubectl {v}: round trip differs");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_can_i_and_rbac_denials() {
    let c = demo().await;
    let viewer = c
        .add_user(
            "viewer",
            vec![kubesim::rule(&["get", "list"], &["pods"], &["shop"])],
        )
        .expect("add user");
    let home = c.state_dir().to_path_buf();
    for v in VERSIONS {
        let args = ["auth", "can-i", "create", "pods", "-n", "shop"];
        let out = kubectl(&c, v, &args, None).await;
        assert_eq!(ok(v, &args, &out).trim(), "yes", "kubectl {v} admin");

        let out = kubectl_in(v, &viewer, &home, &args, None).await;
        assert_eq!(
            text(&out.stdout).trim(),
            "no",
            "kubectl {v} viewer: {out:?}"
        );
        assert_eq!(out.status.code(), Some(1), "kubectl {v} viewer: {out:?}");

        let args = ["auth", "can-i", "list", "pods", "-n", "shop"];
        let out = kubectl_in(v, &viewer, &home, &args, None).await;
        assert_eq!(ok(v, &args, &out).trim(), "yes", "kubectl {v} viewer list");

        let args = ["auth", "can-i", "list", "pods", "-n", "payments"];
        let out = kubectl_in(v, &viewer, &home, &args, None).await;
        assert_eq!(
            text(&out.stdout).trim(),
            "no",
            "kubectl {v} viewer other ns"
        );

        let args = ["get", "pods", "-n", "shop"];
        let out = kubectl_in(v, &viewer, &home, &args, None).await;
        assert!(
            ok(v, &args, &out).contains("orders-db-0"),
            "kubectl {v} viewer get"
        );

        let args = ["delete", "pod", "orders-db-0", "-n", "shop", "--wait=false"];
        let out = kubectl_in(v, &viewer, &home, &args, None).await;
        assert!(
            !out.status.success(),
            "kubectl {v}: viewer delete succeeded"
        );
        let err = text(&out.stderr);
        assert!(
            err.contains("Error from server (Forbidden)")
                && err.contains(
                    "pods \"orders-db-0\" is forbidden: User \"viewer\" cannot delete resource \"pods\" in API group \"\" in the namespace \"shop\""
                ),
            "kubectl {v}: {err}"
        );

        let args = [
            "exec",
            "-n",
            "shop",
            "orders-db-0",
            "-c",
            "db",
            "--",
            "true",
        ];
        let out = kubectl_in(v, &viewer, &home, &args, None).await;
        assert!(!out.status.success(), "kubectl {v}: viewer exec succeeded");
        assert!(
            text(&out.stderr).contains("forbidden"),
            "kubectl {v}: {}",
            text(&out.stderr)
        );
    }
    assert!(
        c.objects("pods", Some("shop"))
            .iter()
            .any(|p| p["metadata"]["name"] == "orders-db-0"
                && p["metadata"]["deletionTimestamp"].is_null()),
        "the denied delete left orders-db-0 alone"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_attach_blocks_a_pod_on_another_node() {
    let c = demo().await;
    let db = c
        .objects("pods", Some("shop"))
        .into_iter()
        .find(|p| p["metadata"]["name"] == "orders-db-0")
        .expect("orders-db-0");
    let db_node = db["spec"]["nodeName"]
        .as_str()
        .expect("scheduled")
        .to_string();
    let other = ["node-1", "node-2"]
        .into_iter()
        .find(|n| *n != db_node)
        .expect("another untainted node");
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: thief
  namespace: shop
  annotations:
    sidecar.istio.io/inject: "false"
spec:
  nodeSelector:
    kubernetes.io/hostname: {other}
  containers:
  - name: c
    image: busybox:1.36
    command: ["sleep", "3600"]
    volumeMounts:
    - name: data
      mountPath: /data
  volumes:
  - name: data
    persistentVolumeClaim:
      claimName: data-orders-db-0
"#
    );
    let args = ["create", "--validate=false", "-f", "-"];
    let out = kubectl(&c, "1.33", &args, Some(manifest.as_bytes())).await;
    assert_eq!(ok("1.33", &args, &out).trim(), "pod/thief created");

    // Wait for the attach/detach controller to report; the pod must never start.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let events = loop {
        let args = ["get", "events", "-n", "shop"];
        let out = ok("1.33", &args, &kubectl(&c, "1.33", &args, None).await);
        if out.contains("Multi-Attach error") {
            break out;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Multi-Attach event: {out}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let line = events
        .lines()
        .find(|l| l.contains("Multi-Attach error"))
        .expect("event line");
    assert!(
        line.contains("FailedAttachVolume")
            && line.contains("pod/thief")
            && line.contains("Volume is already used by pod(s) orders-db-0"),
        "{line}"
    );
    for v in VERSIONS {
        let args = ["get", "pod", "thief", "-n", "shop"];
        let out = ok(v, &args, &kubectl(&c, v, &args, None).await);
        let row: Vec<&str> = out
            .lines()
            .nth(1)
            .expect("row")
            .split_whitespace()
            .collect();
        assert_eq!(row[1], "0/1", "kubectl {v}: {out}");
        assert_eq!(row[2], "ContainerCreating", "kubectl {v}: {out}");

        let args = ["describe", "pod", "thief", "-n", "shop"];
        let out = ok(v, &args, &kubectl(&c, v, &args, None).await);
        assert!(
            out.lines()
                .any(|l| l.starts_with("Node:") && l.contains(&format!(" {other}/"))),
            "kubectl {v} describe shows the node: {out}"
        );
        assert!(
            out.contains("FailedAttachVolume") && out.contains("Multi-Attach error"),
            "kubectl {v} describe: {out}"
        );
    }
    let thief = c
        .objects("pods", Some("shop"))
        .into_iter()
        .find(|p| p["metadata"]["name"] == "thief")
        .expect("thief exists");
    assert_eq!(thief["status"]["phase"], "Pending");
    assert_eq!(thief["spec"]["nodeName"], other);
    c.shutdown().await;
}

fn fails(version: &str, args: &[&str], out: &Output) -> String {
    assert!(
        !out.status.success(),
        "kubectl {version} {args:?} should have failed: stdout={}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

/// What a new user types first, with no special flags: `create namespace` (a protobuf POST
/// from ≥ 1.32), `create -f` / `apply -f` with validation on (OpenAPI v2 downloaded as
/// protobuf, the v3 documents consulted for `fieldValidation`), a second `apply` that
/// strategic-merges, `explain`, `get -o yaml`, `delete`; and `apply --server-side`, which
/// kubesim refuses as a server without it would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_steps_of_a_new_user() {
    let c = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    for v in VERSIONS {
        let ns = format!("team-{}", v.replace('.', "-"));
        let args = ["create", "namespace", ns.as_str()];
        let out = ok(v, &args, &kubectl(&c, v, &args, None).await);
        assert_eq!(out.trim(), format!("namespace/{ns} created"), "kubectl {v}");
        assert!(
            c.objects("namespaces", None)
                .iter()
                .any(|n| n["metadata"]["name"] == ns.as_str()),
            "kubectl {v}: namespace stored"
        );

        let pvc = format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\n  namespace: {ns}\n\
             spec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 1Mi\n"
        );
        let args = ["create", "-f", "-"];
        let out = ok(v, &args, &kubectl(&c, v, &args, Some(pvc.as_bytes())).await);
        assert_eq!(
            out.trim(),
            "persistentvolumeclaim/data created",
            "kubectl {v}"
        );

        // Validation is on: a misspelt field is refused, and nothing is created.
        let typo = pvc
            .replace("name: data", "name: typo")
            .replace("accessModes", "accesModes");
        let args = ["create", "-f", "-"];
        let err = fails(
            v,
            &args,
            &kubectl(&c, v, &args, Some(typo.as_bytes())).await,
        );
        assert!(
            err.contains("unknown field \"spec.accesModes\""),
            "kubectl {v}: {err}"
        );
        assert!(
            !c.objects("persistentvolumeclaims", Some(&ns))
                .iter()
                .any(|p| p["metadata"]["name"] == "typo"),
            "kubectl {v}: the invalid claim was not created"
        );

        let pod = |image: &str, tier: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: {ns}\n  labels:\n    tier: {tier}\n\
                 spec:\n  containers:\n  - name: app\n    image: {image}\n    command: [sleep, '3600']\n"
            )
        };
        let args = ["apply", "-f", "-"];
        let first = pod("busybox", "front");
        let out = ok(
            v,
            &args,
            &kubectl(&c, v, &args, Some(first.as_bytes())).await,
        );
        assert_eq!(out.trim(), "pod/web created", "kubectl {v}");
        let second = pod("busybox:1.36", "back");
        let out = ok(
            v,
            &args,
            &kubectl(&c, v, &args, Some(second.as_bytes())).await,
        );
        assert_eq!(out.trim(), "pod/web configured", "kubectl {v}");
        let stored = c
            .objects("pods", Some(&ns))
            .into_iter()
            .find(|p| p["metadata"]["name"] == "web")
            .expect("pod stored");
        assert_eq!(stored["metadata"]["labels"]["tier"], "back", "kubectl {v}");
        let app = &stored["spec"]["containers"][0];
        assert_eq!(app["image"], "busybox:1.36", "kubectl {v}");
        // The container list was merged by name, not replaced: the server's defaults stay.
        assert_eq!(
            app["terminationMessagePath"], "/dev/termination-log",
            "kubectl {v}: {stored}"
        );

        // `kubectl run` (a JSON POST), then `kubectl debug --copy-to`, which reads the pod and
        // creates its copy with the typed client: a protobuf GET and POST from 1.32 on, so the
        // whole pod makes the round trip through kubesim's encoder, client-go and its decoder.
        let args = [
            "run",
            "probe",
            "-n",
            ns.as_str(),
            "--image=busybox",
            "--restart=Never",
            "--labels=app=probe",
            "--env=MODE=check",
            "--",
            "sleep",
            "3600",
        ];
        let out = ok(v, &args, &kubectl(&c, v, &args, None).await);
        assert_eq!(out.trim(), "pod/probe created", "kubectl {v}");
        let probe = c
            .objects("pods", Some(&ns))
            .into_iter()
            .find(|p| p["metadata"]["name"] == "probe")
            .expect("pod stored");
        assert_eq!(probe["metadata"]["labels"]["app"], "probe", "kubectl {v}");
        assert_eq!(probe["spec"]["restartPolicy"], "Never", "kubectl {v}");
        let c0 = &probe["spec"]["containers"][0];
        assert_eq!(
            c0["args"],
            serde_json::json!(["sleep", "3600"]),
            "kubectl {v}: {probe}"
        );
        assert_eq!(c0["env"][0]["value"], "check", "kubectl {v}: {probe}");
        let args = [
            "debug",
            "probe",
            "-n",
            ns.as_str(),
            "--copy-to=probe-copy",
            "--set-image=*=busybox:1.37",
            "--attach=false",
        ];
        ok(v, &args, &kubectl(&c, v, &args, None).await);
        let copy = c
            .objects("pods", Some(&ns))
            .into_iter()
            .find(|p| p["metadata"]["name"] == "probe-copy")
            .expect("copy stored");
        let c1 = &copy["spec"]["containers"][0];
        assert_eq!(c1["image"], "busybox:1.37", "kubectl {v}: {copy}");
        assert_eq!(c1["args"], c0["args"], "kubectl {v}: {copy}");
        assert_eq!(c1["env"], c0["env"], "kubectl {v}: {copy}");
        assert_eq!(
            copy["spec"]["volumes"], probe["spec"]["volumes"],
            "kubectl {v}"
        );
        for pod in ["probe", "probe-copy"] {
            let args = ["delete", "pod", pod, "-n", ns.as_str(), "--grace-period=0"];
            ok(v, &args, &kubectl(&c, v, &args, None).await);
        }

        let args = ["get", "pod", "web", "-n", ns.as_str(), "-o", "yaml"];
        let out = ok(v, &args, &kubectl(&c, v, &args, None).await);
        assert!(
            out.contains("image: busybox:1.36")
                && out.contains("kubectl.kubernetes.io/last-applied-configuration"),
            "kubectl {v}: {out}"
        );

        let args = ["explain", "pvc.spec.accessModes"];
        let out = ok(v, &args, &kubectl(&c, v, &args, None).await);
        assert!(
            out.contains("PersistentVolumeClaim") && out.contains("accessModes"),
            "kubectl {v}: {out}"
        );
        let args = ["explain", "pvc"];
        let out = ok(v, &args, &kubectl(&c, v, &args, None).await);
        for field in ["apiVersion", "metadata", "spec", "status"] {
            assert!(out.contains(field), "kubectl {v}: {field} in {out}");
        }

        let args = ["apply", "--server-side", "-f", "-"];
        let err = fails(
            v,
            &args,
            &kubectl(&c, v, &args, Some(second.as_bytes())).await,
        );
        assert!(
            err.contains("the body of the request was in an unknown format"),
            "kubectl {v}: {err}"
        );

        for args in [
            [
                "delete",
                "pod",
                "web",
                "-n",
                ns.as_str(),
                "--grace-period=0",
            ],
            ["delete", "pvc", "data", "-n", ns.as_str(), "--wait=false"],
        ] {
            ok(v, &args, &kubectl(&c, v, &args, None).await);
        }
        let args = ["delete", "namespace", ns.as_str(), "--wait=false"];
        let out = ok(v, &args, &kubectl(&c, v, &args, None).await);
        assert_eq!(
            out.trim(),
            format!("namespace \"{ns}\" deleted"),
            "kubectl {v}"
        );
    }
    c.shutdown().await;
}

/// `kubectl events` lists and watches with the typed client: from 1.32 on a protobuf
/// `EventList` and a protobuf watch stream (`application/vnd.kubernetes.protobuf;stream=watch`,
/// length-delimited `WatchEvent` frames), decoded by client-go itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_list_and_watch() {
    use tokio::io::AsyncBufReadExt;
    let c = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let args = ["create", "namespace", "ev"];
    ok("1.33", &args, &kubectl(&c, "1.33", &args, None).await);
    for v in VERSIONS {
        let pod = format!("ev-{}", v.replace('.', "-"));
        let mut watch = tokio::process::Command::new(kubectl_bin(v))
            .args(["events", "-n", "ev", "--watch"])
            .env_clear()
            .env("KUBECONFIG", c.kubeconfig())
            .env("HOME", c.state_dir())
            .env("PATH", "/usr/bin:/bin")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning kubectl events --watch");
        let mut lines = tokio::io::BufReader::new(watch.stdout.take().expect("piped")).lines();
        // Let the list and the watch start before the pod exists, so its events arrive on
        // the watch (kubectl takes well under a second for discovery, list and watch here).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let args = [
            "run",
            pod.as_str(),
            "-n",
            "ev",
            "--image=busybox",
            "--restart=Never",
            "--",
            "sleep",
            "600",
        ];
        ok(v, &args, &kubectl(&c, v, &args, None).await);
        let started = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l.contains(&format!("Pod/{pod}")) && l.contains("Started") {
                    return Some(l);
                }
            }
            None
        })
        .await
        .expect("the watch shows the pod's events within a minute");
        assert!(started.is_some(), "kubectl {v}: watch ended early");
        watch.kill().await.expect("stopping the watch");

        let args = ["events", "-n", "ev"];
        let out = ok(v, &args, &kubectl(&c, v, &args, None).await);
        assert!(
            out.lines()
                .any(|l| l.contains("Scheduled") && l.contains(&format!("Pod/{pod}"))),
            "kubectl {v}: {out}"
        );
    }
    c.shutdown().await;
}

/// A TCP port nothing listens on right now (for a pod's server: every pod of every test shares
/// the host's loopback, see kubesim's README).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `kubectl port-forward`, running until killed: returned once it printed its
/// "Forwarding from 127.0.0.1:LOCAL -> REMOTE" line, with its stderr still to read.
async fn port_forward(c: &Cluster, version: &str, args: &[&str]) -> tokio::process::Child {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new(kubectl_bin(version));
    cmd.args(args)
        .env_clear()
        .env("KUBECONFIG", c.kubeconfig())
        .env("HOME", c.state_dir())
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning kubectl {version}: {e}"));
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("stdout") {
            if line.starts_with("Forwarding from 127.0.0.1:") {
                return true;
            }
        }
        false
    })
    .await;
    if ready != Ok(true) {
        let _ = child.start_kill();
        let out = child.wait_with_output().await.expect("kubectl output");
        panic!(
            "kubectl {version} {args:?} did not start forwarding: {}",
            text(&out.stderr)
        );
    }
    // Keep draining stdout ("Handling connection for N") so kubectl never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// One HTTP/1.0 GET to 127.0.0.1:`port`: (status line, body).
async fn http_get(port: u16, path: &str) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the forwarded port");
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header in {:?}", text(&response)));
    let status = text(&response[..split])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    (status, response[split + 4..].to_vec())
}

/// Stderr of a kubectl that has exited or is killed now.
async fn stderr_of(mut child: tokio::process::Child, wait: Duration) -> (Option<i32>, String) {
    use tokio::io::AsyncReadExt;
    let exited = tokio::time::timeout(wait, child.wait()).await;
    let code = match exited {
        Ok(status) => status.expect("wait").code(),
        Err(_) => {
            child.kill().await.expect("kill kubectl");
            None
        }
    };
    let mut err = Vec::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_end(&mut err).await.expect("stderr");
    }
    (code, text(&err))
}

/// `kubectl port-forward pod/web LOCAL:REMOTE` to a busybox `httpd` in a pod: 1.27 over SPDY
/// (`portforward.k8s.io`), 1.32 and 1.33 over SPDY tunnelled in a WebSocket
/// (`SPDY/3.1+portforward.k8s.io`, their default since 1.31). Two GETs through one
/// port-forward (two stream pairs on one connection) return the file byte for byte; a port
/// nothing in the pod listens on gives kubectl containerd's "connection refused" on the error
/// stream, and kubectl gives up the forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_to_an_http_server_in_a_pod() {
    let c = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let (http, closed) = (free_port(), free_port());
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: httpd\n    image: busybox\n\
         \x20   command: [sh, -c, 'mkdir /www && seq 1 100000 > /www/numbers && exec httpd -f -p {http} -h /www']\n"
    );
    let args = ["apply", "-f", "-"];
    ok(
        "1.33",
        &args,
        &kubectl(&c, "1.33", &args, Some(pod.as_bytes())).await,
    );
    c.wait_for_pods_running(Duration::from_secs(60))
        .await
        .expect("pod runs");
    // httpd binds after the container started.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", http))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "httpd never listened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected: String = (1..=100_000).map(|i| format!("{i}\n")).collect();

    for v in VERSIONS {
        let local = free_port();
        let mapping = format!("{local}:{http}");
        let args = ["-v=6", "port-forward", "pod/web", mapping.as_str()];
        let pf = port_forward(&c, v, &args).await;
        for _ in 0..2 {
            let (status, body) = http_get(local, "/numbers").await;
            assert!(status.ends_with(" 200 OK"), "kubectl {v}: {status}");
            assert!(
                body == expected.as_bytes(),
                "kubectl {v}: {} bytes differ from the file's {}",
                body.len(),
                expected.len()
            );
        }
        let (code, err) = stderr_of(pf, Duration::ZERO).await;
        assert_eq!(code, None, "kubectl {v} kept forwarding: {err}");
        // 1.27 upgrades with a SPDY POST; 1.32/1.33 tunnel through a WebSocket GET (logged by
        // client-go's `tunneling_dialer.go`), with no fallback to SPDY.
        let upgraded = if *v == "1.27" {
            err.contains("POST https://") && err.contains("/pods/web/portforward 101 Switching")
        } else {
            err.contains("Before WebSocket Upgrade Connection")
                && err.contains("negotiated protocol: portforward.k8s.io")
                && !err.contains("POST https://")
                && !err.contains("verb=\"POST\"")
        };
        assert!(upgraded, "kubectl {v}: {err}");

        let local = free_port();
        let mapping = format!("{local}:{closed}");
        let args = ["port-forward", "pod/web", mapping.as_str()];
        let pf = port_forward(&c, v, &args).await;
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", local))
            .await
            .expect("kubectl accepts the local connection");
        let mut got = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got),
        )
        .await
        .expect("kubectl closes the local connection");
        assert!(read.is_err() || got.is_empty(), "kubectl {v}: {got:?}");
        let (code, err) = stderr_of(pf, Duration::from_secs(20)).await;
        assert!(
            err.contains(&format!("error forwarding port {closed} to pod "))
                && err.contains(&format!(
                    "failed to connect to localhost:{closed} inside namespace"
                ))
                && err.contains("connect: connection refused"),
            "kubectl {v}: {err}"
        );
        // Since client-go closes the connection on any error-stream message, kubectl gives up.
        assert!(
            code == Some(1) && err.contains("error: lost connection to pod"),
            "kubectl {v} ({code:?}): {err}"
        );
    }
    c.shutdown().await;
}

/// kubectl lists in chunks of 500 (`--chunk-size`): a fleet of 1,200 pods on hollow nodes comes
/// back whole, as objects and as a Table, in three requests that follow `continue`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_pods_in_chunks_of_500() {
    let c = Cluster::start(ClusterOptions {
        hollow_nodes: 3,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    c.apply(kubesim::scenario::fleet_objects(1200))
        .expect("fleet");
    c.wait_for_pods_running(Duration::from_secs(120))
        .await
        .expect("fleet runs");
    for v in VERSIONS {
        let args = [
            "get",
            "pods",
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}{\"\\n\"}{end}",
            "-v=6",
        ];
        let out = kubectl(&c, v, &args, None).await;
        let names = ok(v, &args, &out);
        let mut names: Vec<&str> = names.lines().collect();
        assert_eq!(names.len(), 1200, "kubectl {v}");
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 1200, "kubectl {v}: no pod twice");
        let log = text(&out.stderr);
        let lists: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("GET") && l.contains("/api/v1/pods?"))
            .collect();
        assert_eq!(lists.len(), 3, "kubectl {v}: {log}");
        assert!(lists.iter().all(|l| l.contains("limit=500")), "{log}");
        assert_eq!(
            lists.iter().filter(|l| l.contains("continue=")).count(),
            2,
            "{log}"
        );

        let args = ["get", "pods", "-A", "--no-headers"];
        let table = ok(v, &args, &kubectl(&c, v, &args, None).await);
        assert_eq!(table.lines().count(), 1200, "kubectl {v}");
        assert!(
            table
                .lines()
                .all(|l| l.contains("team-") && l.contains("Running")),
            "kubectl {v}: {table}"
        );
    }
    c.shutdown().await;
}

"""A second referee for kubesim: the official Kubernetes Python client (`kubernetes` on PyPI).

Run by python_client.rs against a fresh kubesim with the demo scenario; argv[1] is the admin
kubeconfig. Prints one JSON object per line ({"step": ..., ...}) for the Rust test to check,
and exits non-zero on the first exception (with the traceback on stderr).

Nothing here is specific to kubesim: it is what a user's script does with this client.
"""

import json
import socket
import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.stream import portforward, stream

NS = "py-referee"
POD = "py-sleeper"


def emit(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    v1 = client.CoreV1Api()

    # list: namespaces, pods of every namespace, PVCs of one (typed models, so every field
    # the client knows is parsed, dates included).
    namespaces = v1.list_namespace()
    emit("list_namespaces", names=sorted(n.metadata.name for n in namespaces.items),
         resource_version=namespaces.metadata.resource_version)
    pods = v1.list_pod_for_all_namespaces()
    emit("list_pods", pods=sorted(f"{p.metadata.namespace}/{p.metadata.name}" for p in pods.items),
         phases=sorted({p.status.phase for p in pods.items}))
    pvcs = v1.list_namespaced_persistent_volume_claim("shop")
    emit("list_pvcs", pvcs=sorted(c.metadata.name for c in pvcs.items),
         bound=sorted(c.metadata.name for c in pvcs.items if c.status.phase == "Bound"))

    # errors: a missing object is an ApiException with the API's status and reason.
    try:
        v1.read_namespaced_pod("no-such-pod", "shop")
        emit("read_missing", status=200)
    except ApiException as e:
        body = json.loads(e.body)
        emit("read_missing", status=e.status, reason=body.get("reason"), message=body.get("message"))

    v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))

    # watch: started before the pod exists, from the namespace's current resourceVersion, in a
    # thread; it sees the pod come, run and go.
    start_rv = v1.list_namespaced_pod(NS).metadata.resource_version
    events = []
    ready = threading.Event()

    def watch_pods():
        w = watch.Watch()
        ready.set()
        for ev in w.stream(v1.list_namespaced_pod, NS, resource_version=start_rv, timeout_seconds=60):
            obj = ev["object"]
            events.append((ev["type"], obj.metadata.name, obj.status.phase))
            if ev["type"] == "DELETED":
                w.stop()

    watcher = threading.Thread(target=watch_pods, daemon=True)
    watcher.start()
    ready.wait(10)

    # create: a pod, then wait (with another watch) until it runs.
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=POD, labels={"referee": "python"}),
        spec=client.V1PodSpec(
            termination_grace_period_seconds=1,
            containers=[client.V1Container(name="main", image="busybox:1.36", command=["sleep", "3600"])],
        ),
    )
    created = v1.create_namespaced_pod(NS, pod)
    emit("create", name=created.metadata.name, uid=created.metadata.uid, phase=created.status.phase)
    try:
        v1.create_namespaced_pod(NS, pod)
        emit("create_again", status=201)
    except ApiException as e:
        emit("create_again", status=e.status, reason=json.loads(e.body).get("reason"))
    w = watch.Watch()
    phase = None
    for ev in w.stream(v1.list_namespaced_pod, NS, field_selector=f"metadata.name={POD}", timeout_seconds=60):
        phase = ev["object"].status.phase
        if phase == "Running":
            w.stop()
    emit("running", phase=phase, node=v1.read_namespaced_pod(POD, NS).spec.node_name)

    # exec over the client's WebSocket stream: stdout and stderr apart, the exit code from the
    # status channel, stdin written and read back.
    resp = stream(v1.connect_get_namespaced_pod_exec, POD, NS,
                  command=["sh", "-c", "echo out-line; echo err-line >&2; exit 3"],
                  stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    resp.run_forever(timeout=30)
    emit("exec", stdout=resp.read_stdout(), stderr=resp.read_stderr(), returncode=resp.returncode)

    resp = stream(v1.connect_get_namespaced_pod_exec, POD, NS,
                  command=["sh", "-c", "head -c 11 | tr a-z A-Z"],
                  stderr=True, stdin=True, stdout=True, tty=False, _preload_content=False)
    resp.write_stdin("hello world")
    out = ""
    while resp.is_open():
        resp.update(timeout=5)
        out += resp.read_stdout()
    emit("exec_stdin", stdout=out, returncode=resp.returncode)

    # The simple form: output as one string, as most scripts use it.
    text = stream(v1.connect_get_namespaced_pod_exec, POD, NS, command=["cat", "/etc/hostname"],
                  stderr=True, stdin=False, stdout=True, tty=False)
    emit("exec_simple", output=text)

    # port-forward over the client's WebSocket (`v4.channel.k8s.io`, `?ports=`): an echo server
    # started in the pod by exec, reached through the forward; a port nothing listens on
    # reports its error on the port's error channel.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stream(v1.connect_get_namespaced_pod_exec, POD, NS,
           command=["sh", "-c", f"nc -l -p {port} -e cat </dev/null >/dev/null 2>&1 &"],
           stderr=True, stdin=False, stdout=True, tty=False)
    echoed, errors = b"", []
    for _ in range(50):
        pf = portforward(v1.connect_get_namespaced_pod_portforward, POD, NS, ports=str(port))
        sock = pf.socket(port)
        sock.settimeout(10)
        sock.sendall(b"through the forward")
        try:
            while len(echoed) < len(b"through the forward"):
                chunk = sock.recv(1024)
                if not chunk:
                    break
                echoed += chunk
        except OSError:
            pass
        if echoed:
            pf.close()
            break
        # Not listening yet: the error channel says why.
        errors.append(pf.error(port))
        pf.close()
        time.sleep(0.2)
    emit("portforward", echoed=echoed.decode(), first_error=errors[0] if errors else None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    pf = portforward(v1.connect_get_namespaced_pod_portforward, POD, NS, ports=str(closed))
    sock = pf.socket(closed)
    sock.settimeout(10)
    got = sock.recv(1024)
    for _ in range(50):
        if pf.error(closed) is not None:
            break
        time.sleep(0.1)
    emit("portforward_closed", received=got.decode(), error=pf.error(closed), port=closed)

    # delete: the pod goes (grace period 1 s), the watch sees DELETED.
    v1.delete_namespaced_pod(POD, NS, body=client.V1DeleteOptions(grace_period_seconds=1))
    watcher.join(60)
    emit("watch", events=events, finished=not watcher.is_alive())
    try:
        v1.read_namespaced_pod(POD, NS)
        emit("after_delete", status=200)
    except ApiException as e:
        emit("after_delete", status=e.status)
    v1.delete_namespace(NS)


if __name__ == "__main__":
    main(sys.argv[1])

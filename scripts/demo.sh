#!/usr/bin/env bash
# The main job on a machine without a cluster: start kubesim's demo cluster, discover the mesh
# workloads, back up every PVC they mount, verify the archives, list them. With a real cluster,
# set USE_CURRENT_CONTEXT=1 to skip kubesim and use your kubeconfig.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --workspace
bin=target/release
work=$(mktemp -d /tmp/pvbackup-demo.XXXX)
if [ "${USE_CURRENT_CONTEXT:-0}" != 1 ]; then
  # kubesim checks busybox, root and mounts first and exits 1 naming the fix; status waits
  # until every demo pod runs, and gives up as soon as kubesim has exited.
  "$bin/kubesim" serve --state-dir "$work/state" --kubeconfig "$work/kubeconfig" --scenario demo > "$work/kubesim.out" &
  sim=$!
  # SIGTERM makes kubesim unmount every volume before it exits; only then can the state go.
  trap 'kill $sim 2>/dev/null || true; wait $sim 2>/dev/null || true; rm -rf "$work"' EXIT
  started=$SECONDS
  until "$bin/kubesim" status --kubeconfig "$work/kubeconfig" --wait 1 >/dev/null 2>&1; do
    kill -0 $sim 2>/dev/null || { rc=0; wait $sim || rc=$?; echo "kubesim did not start (exit $rc)" >&2; exit 1; }
    [ $((SECONDS - started)) -lt 180 ] || { echo "kubesim was not ready after 180 s" >&2; exit 1; }
  done
  export KUBECONFIG="$work/kubeconfig"
fi
export PATH="$PWD/$bin:$PATH"   # so `kubectl pvbackup` finds the plugin
set -x
kubectl pvbackup discover -A
kubectl pvbackup create -A --to "$work/backups" || echo "create exited $? (the demo has a ReadWriteOncePod volume in use, which is refused by design)"
kubectl pvbackup list "$work/backups"
for m in "$work"/backups/*/*/*.manifest.json; do kubectl pvbackup verify "$m"; done
# Bring one volume back: a weekly-style drill (scratch PVC, in-cluster checksums, cleaned up),
# then a restore of the same backup into a new PVC beside the original.
first=$(ls "$work"/backups/*/shop/data-orders-db-0.manifest.json | head -1)
kubectl pvbackup drill "$first"
kubectl pvbackup restore "$first" --to-pvc data-orders-db-0-copy --create-pvc --yes
kubectl get pvc -n shop data-orders-db-0-copy

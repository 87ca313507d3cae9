#!/usr/bin/env bash
# The main job on a machine without a cluster: start kubesim's demo cluster, discover the mesh
# workloads, back up every PVC they mount, verify the archives, list them. With a real cluster,
# set USE_CURRENT_CONTEXT=1 to skip kubesim and use your kubeconfig.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/bin/busybox ] || { echo "kubesim needs Debian's busybox-static: apt-get install -y busybox-static" >&2; exit 1; }
cargo build --release --quiet --workspace
bin=target/release
work=$(mktemp -d /tmp/pvbackup-demo.XXXX)
if [ "${USE_CURRENT_CONTEXT:-0}" != 1 ]; then
  "$bin/kubesim" serve --state-dir "$work/state" --kubeconfig "$work/kubeconfig" --scenario demo > "$work/kubesim.out" &
  sim=$!
  trap 'kill $sim 2>/dev/null; wait $sim 2>/dev/null; rm -rf "$work"' EXIT
  for _ in $(seq 1 120); do grep -q '^ready ' "$work/kubesim.out" 2>/dev/null && break; sleep 0.5; done
  grep -q '^ready ' "$work/kubesim.out" || { echo "kubesim did not start" >&2; exit 1; }
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

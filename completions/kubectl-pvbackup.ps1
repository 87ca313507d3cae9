
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'kubectl-pvbackup' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'kubectl-pvbackup'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'kubectl-pvbackup' {
            [CompletionResult]::new('--kubeconfig', '--kubeconfig', [CompletionResultType]::ParameterName, 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
            [CompletionResult]::new('--context', '--context', [CompletionResultType]::ParameterName, 'The kubeconfig context to use')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('--namespace', '--namespace', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('-A', '-A ', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('--all-namespaces', '--all-namespaces', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--no-progress', '--no-progress', [CompletionResultType]::ParameterName, 'No progress bars (they are also off when stderr is not a terminal)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('discover', 'discover', [CompletionResultType]::ParameterValue, 'List pods that run a service-mesh proxy and the PVCs they mount')
            [CompletionResult]::new('create', 'create', [CompletionResultType]::ParameterValue, 'Back up PVCs to a destination through a short-lived helper pod')
            [CompletionResult]::new('verify', 'verify', [CompletionResultType]::ParameterValue, 'Check an archive against its manifest (offline, no cluster needed)')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'List the backups at a destination')
            [CompletionResult]::new('inspect', 'inspect', [CompletionResultType]::ParameterValue, 'Show a backup''s manifest')
            [CompletionResult]::new('restore', 'restore', [CompletionResultType]::ParameterValue, 'Restore a backup into a PVC, all-or-nothing')
            [CompletionResult]::new('cleanup', 'cleanup', [CompletionResultType]::ParameterValue, 'Delete what interrupted runs left: helper pods, or (--to) partial backups at DEST')
            [CompletionResult]::new('prune', 'prune', [CompletionResultType]::ParameterValue, 'Remove the backups at DEST a retention policy does not keep (restic-style --keep-*)')
            [CompletionResult]::new('version', 'version', [CompletionResultType]::ParameterValue, 'Print version, git commit and build target')
            [CompletionResult]::new('completion', 'completion', [CompletionResultType]::ParameterValue, 'Print a shell completion script for kubectl-pvbackup')
            [CompletionResult]::new('drill', 'drill', [CompletionResultType]::ParameterValue, 'Test-restore a backup into a scratch PVC, verify it in the cluster, delete the PVC')
            [CompletionResult]::new('schedule', 'schedule', [CompletionResultType]::ParameterValue, 'Back up on a schedule, in the cluster: a CronJob that runs this plugin''s image')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'kubectl-pvbackup;discover' {
            [CompletionResult]::new('-l', '-l', [CompletionResultType]::ParameterName, 'Label selector for pods (e.g. app=orders-db)')
            [CompletionResult]::new('--selector', '--selector', [CompletionResultType]::ParameterName, 'Label selector for pods (e.g. app=orders-db)')
            [CompletionResult]::new('--kubeconfig', '--kubeconfig', [CompletionResultType]::ParameterName, 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
            [CompletionResult]::new('--context', '--context', [CompletionResultType]::ParameterName, 'The kubeconfig context to use')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('--namespace', '--namespace', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--all-pods', '--all-pods', [CompletionResultType]::ParameterName, 'Also list pods without a mesh proxy')
            [CompletionResult]::new('-A', '-A ', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('--all-namespaces', '--all-namespaces', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--no-progress', '--no-progress', [CompletionResultType]::ParameterName, 'No progress bars (they are also off when stderr is not a terminal)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kubectl-pvbackup;create' {
            [CompletionResult]::new('--to', '--to', [CompletionResultType]::ParameterName, 'Destination: a local directory (or file:///path), s3://bucket/prefix, az://container/prefix or gs://bucket/prefix')
            [CompletionResult]::new('--mesh', '--mesh', [CompletionResultType]::ParameterName, 'Only PVCs mounted by pods of this mesh')
            [CompletionResult]::new('-l', '-l', [CompletionResultType]::ParameterName, 'Label selector for the pods whose PVCs are backed up')
            [CompletionResult]::new('--selector', '--selector', [CompletionResultType]::ParameterName, 'Label selector for the pods whose PVCs are backed up')
            [CompletionResult]::new('--compression', '--compression', [CompletionResultType]::ParameterName, 'Compression of the stored archive')
            [CompletionResult]::new('--level', '--level', [CompletionResultType]::ParameterName, 'Compression level (gzip 0-9, zstd 1-19; default: the fastest)')
            [CompletionResult]::new('--snapshot', '--snapshot', [CompletionResultType]::ParameterName, 'Copy from a CSI VolumeSnapshot (or a clone) of the PVC: `auto` when the PVC''s driver has a VolumeSnapshotClass, `always` or fail, `never` (read the live volume)')
            [CompletionResult]::new('--snapshot-class', '--snapshot-class', [CompletionResultType]::ParameterName, 'VolumeSnapshotClass to use instead of the driver''s default')
            [CompletionResult]::new('--snapshot-timeout', '--snapshot-timeout', [CompletionResultType]::ParameterName, 'How long a snapshot may take to be cut and ready, and its temporary PVC to bind')
            [CompletionResult]::new('--pre-hook', '--pre-hook', [CompletionResultType]::ParameterName, 'Command (sh -c) to run in the workload''s container before the copy is cut')
            [CompletionResult]::new('--post-hook', '--post-hook', [CompletionResultType]::ParameterName, 'Command (sh -c) to run in the workload''s container once the copy is cut, even on failure')
            [CompletionResult]::new('--hook-container', '--hook-container', [CompletionResultType]::ParameterName, 'Container for the hooks (default: the first non-proxy container that mounts the PVC)')
            [CompletionResult]::new('--hook-timeout', '--hook-timeout', [CompletionResultType]::ParameterName, 'Give up on a hook after this long')
            [CompletionResult]::new('--hook-on-error', '--hook-on-error', [CompletionResultType]::ParameterName, 'What a failing hook does: `fail` stops this PVC''s backup, `continue` goes on')
            [CompletionResult]::new('--image', '--image', [CompletionResultType]::ParameterName, 'Helper image (any image with busybox-compatible sh, tar, find, stat, xargs, sha256sum, awk)')
            [CompletionResult]::new('--run-as-user', '--run-as-user', [CompletionResultType]::ParameterName, 'Run the helper as this UID instead of root (for PodSecurity `restricted` namespaces)')
            [CompletionResult]::new('--pod-timeout', '--pod-timeout', [CompletionResultType]::ParameterName, 'Give up when the helper pod is not running after this many seconds')
            [CompletionResult]::new('--retries', '--retries', [CompletionResultType]::ParameterName, 'Retries per PVC after a transient failure (connection reset, API outage or 5xx/429, helper pod evicted or killed, stalled stream); 0 turns retries off')
            [CompletionResult]::new('--retry-timeout', '--retry-timeout', [CompletionResultType]::ParameterName, 'Stop retrying once this much time has passed since the PVC''s first failure (e.g. 30s, 5m)')
            [CompletionResult]::new('--stall-timeout', '--stall-timeout', [CompletionResultType]::ParameterName, 'Declare a data stream dead when no byte moves for this long (e.g. 60s, 2m)')
            [CompletionResult]::new('--parallel', '--parallel', [CompletionResultType]::ParameterName, 'Back up this many PVCs at once')
            [CompletionResult]::new('--max-per-node', '--max-per-node', [CompletionResultType]::ParameterName, 'At most this many helper pods on any one node at a time')
            [CompletionResult]::new('--streams', '--streams', [CompletionResultType]::ParameterName, 'Exec streams per volume, `auto` or 1-16; several fill a distant link that one stream cannot, into one archive. auto: one inside the cluster or below 64 MiB, else measured: one if a stream carries 100 MB/s, else enough to make that up and one more (at most one per 32 MiB, and 4)')
            [CompletionResult]::new('--encrypt-to', '--encrypt-to', [CompletionResultType]::ParameterName, 'Encrypt the backup with age to this recipient: an X25519 key `age1…` or an SSH public key (`ssh-ed25519 …`, `ssh-rsa …`). Repeatable')
            [CompletionResult]::new('--encrypt-to-file', '--encrypt-to-file', [CompletionResultType]::ParameterName, 'Encrypt to every recipient in FILE (one per line, `#` comments; age''s `-R` format). Repeatable')
            [CompletionResult]::new('--endpoint', '--endpoint', [CompletionResultType]::ParameterName, 'Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)')
            [CompletionResult]::new('--part-size', '--part-size', [CompletionResultType]::ParameterName, 'Multipart upload part size in MiB (5-512; default 8). Memory is about 6 parts per PVC')
            [CompletionResult]::new('--kubeconfig', '--kubeconfig', [CompletionResultType]::ParameterName, 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
            [CompletionResult]::new('--context', '--context', [CompletionResultType]::ParameterName, 'The kubeconfig context to use')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('--namespace', '--namespace', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--all-pvcs', '--all-pvcs', [CompletionResultType]::ParameterName, 'Every PVC in scope, mounted or not, mesh or not')
            [CompletionResult]::new('--require-consistent', '--require-consistent', [CompletionResultType]::ParameterName, 'Fail (and write nothing) when a live copy saw files change while it read them')
            [CompletionResult]::new('--dry-run', '--dry-run', [CompletionResultType]::ParameterName, 'Print the plan and the helper pod spec; create nothing')
            [CompletionResult]::new('-A', '-A ', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('--all-namespaces', '--all-namespaces', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--no-progress', '--no-progress', [CompletionResultType]::ParameterName, 'No progress bars (they are also off when stderr is not a terminal)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kubectl-pvbackup;verify' {
            [CompletionResult]::new('--from', '--from', [CompletionResultType]::ParameterName, 'Where the backup lives, when BACKUP is an id')
            [CompletionResult]::new('--identity', '--identity', [CompletionResultType]::ParameterName, 'Private key to decrypt an encrypted backup with: an age identity file (`age-keygen -o FILE`) or an unencrypted OpenSSH private key. Repeatable')
            [CompletionResult]::new('--endpoint', '--endpoint', [CompletionResultType]::ParameterName, 'Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)')
            [CompletionResult]::new('--kubeconfig', '--kubeconfig', [CompletionResultType]::ParameterName, 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
            [CompletionResult]::new('--context', '--context', [CompletionResultType]::ParameterName, 'The kubeconfig context to use')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('--namespace', '--namespace', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('-A', '-A ', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('--all-namespaces', '--all-namespaces', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--no-progress', '--no-progress', [CompletionResultType]::ParameterName, 'No progress bars (they are also off when stderr is not a terminal)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kubectl-pvbackup;list' {
            [CompletionResult]::new('--endpoint', '--endpoint', [CompletionResultType]::ParameterName, 'Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)')
            [CompletionResult]::new('--kubeconfig', '--kubeconfig', [CompletionResultType]::ParameterName, 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
            [CompletionResult]::new('--context', '--context', [CompletionResultType]::ParameterName, 'The kubeconfig context to use')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('--namespace', '--namespace', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('-A', '-A ', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('--all-namespaces', '--all-namespaces', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--no-progress', '--no-progress', [CompletionResultType]::ParameterName, 'No progress bars (they are also off when stderr is not a terminal)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kubectl-pvbackup;inspect' {
            [CompletionResult]::new('--from', '--from', [CompletionResultType]::ParameterName, 'Where the backup lives, when BACKUP is an id')
            [CompletionResult]::new('--identity', '--identity', [CompletionResultType]::ParameterName, 'Private key to decrypt an encrypted backup with: an age identity file (`age-keygen -o FILE`) or an unencrypted OpenSSH private key. Repeatable')
            [CompletionResult]::new('--endpoint', '--endpoint', [CompletionResultType]::ParameterName, 'Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)')
            [CompletionResult]::new('--kubeconfig', '--kubeconfig', [CompletionResultType]::ParameterName, 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
            [CompletionResult]::new('--context', '--context', [CompletionResultType]::ParameterName, 'The kubeconfig context to use')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('--namespace', '--namespace', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--files', '--files', [CompletionResultType]::ParameterName, 'List every entry')
            [CompletionResult]::new('-A', '-A ', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('--all-namespaces', '--all-namespaces', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--no-progress', '--no-progress', [CompletionResultType]::ParameterName, 'No progress bars (they are also off when stderr is not a terminal)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kubectl-pvbackup;restore' {
            [CompletionResult]::new('--from', '--from', [CompletionResultType]::ParameterName, 'Where the backup lives, when BACKUP is an id')
            [CompletionResult]::new('--to-pvc', '--to-pvc', [CompletionResultType]::ParameterName, 'Target PVC (default: the PVC the backup was taken from)')
            [CompletionResult]::new('--storage-class', '--storage-class', [CompletionResultType]::ParameterName, 'With --create-pvc: use this StorageClass')
            [CompletionResult]::new('--size', '--size', [CompletionResultType]::ParameterName, 'With --create-pvc: request this size (e.g. 2Gi)')
            [CompletionResult]::new('--mode', '--mode', [CompletionResultType]::ParameterName, 'How the backup meets what is already on the volume')
            [CompletionResult]::new('--snapshot', '--snapshot', [CompletionResultType]::ParameterName, 'With --in-place: first cut a VolumeSnapshot of the target to roll back to: `auto` when its driver has a VolumeSnapshotClass, `always` or refuse, `never`')
            [CompletionResult]::new('--keep-snapshot', '--keep-snapshot', [CompletionResultType]::ParameterName, 'With --in-place: keep that snapshot after a successful restore; --keep-snapshot=false deletes it (it is always kept after a failure)')
            [CompletionResult]::new('--snapshot-class', '--snapshot-class', [CompletionResultType]::ParameterName, 'With --in-place: VolumeSnapshotClass to use instead of the driver''s default')
            [CompletionResult]::new('--snapshot-timeout', '--snapshot-timeout', [CompletionResultType]::ParameterName, 'With --in-place: how long the snapshot may take to be cut and ready')
            [CompletionResult]::new('--image', '--image', [CompletionResultType]::ParameterName, 'Helper image (any image with busybox-compatible sh, tar, find, stat, xargs, sha256sum, awk)')
            [CompletionResult]::new('--run-as-user', '--run-as-user', [CompletionResultType]::ParameterName, 'Run the helper as this UID instead of root (for PodSecurity `restricted` namespaces)')
            [CompletionResult]::new('--pod-timeout', '--pod-timeout', [CompletionResultType]::ParameterName, 'Give up when the helper pod is not running after this many seconds')
            [CompletionResult]::new('--retries', '--retries', [CompletionResultType]::ParameterName, 'Retries per PVC after a transient failure (connection reset, API outage or 5xx/429, helper pod evicted or killed, stalled stream); 0 turns retries off')
            [CompletionResult]::new('--retry-timeout', '--retry-timeout', [CompletionResultType]::ParameterName, 'Stop retrying once this much time has passed since the PVC''s first failure (e.g. 30s, 5m)')
            [CompletionResult]::new('--stall-timeout', '--stall-timeout', [CompletionResultType]::ParameterName, 'Declare a data stream dead when no byte moves for this long (e.g. 60s, 2m)')
            [CompletionResult]::new('--identity', '--identity', [CompletionResultType]::ParameterName, 'Private key to decrypt an encrypted backup with: an age identity file (`age-keygen -o FILE`) or an unencrypted OpenSSH private key. Repeatable')
            [CompletionResult]::new('--endpoint', '--endpoint', [CompletionResultType]::ParameterName, 'Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)')
            [CompletionResult]::new('--kubeconfig', '--kubeconfig', [CompletionResultType]::ParameterName, 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
            [CompletionResult]::new('--context', '--context', [CompletionResultType]::ParameterName, 'The kubeconfig context to use')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('--namespace', '--namespace', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--create-pvc', '--create-pvc', [CompletionResultType]::ParameterName, 'Create the target PVC from the manifest''s spec')
            [CompletionResult]::new('-y', '-y', [CompletionResultType]::ParameterName, 'Do not ask for confirmation')
            [CompletionResult]::new('--yes', '--yes', [CompletionResultType]::ParameterName, 'Do not ask for confirmation')
            [CompletionResult]::new('--dry-run', '--dry-run', [CompletionResultType]::ParameterName, 'Print the plan; change nothing')
            [CompletionResult]::new('--force', '--force', [CompletionResultType]::ParameterName, 'Restore even while other pods mount the PVC')
            [CompletionResult]::new('--in-place', '--in-place', [CompletionResultType]::ParameterName, 'Delete the PVC''s content, then extract straight into it; no rollback: a failure leaves the volume partly restored')
            [CompletionResult]::new('-A', '-A ', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('--all-namespaces', '--all-namespaces', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--no-progress', '--no-progress', [CompletionResultType]::ParameterName, 'No progress bars (they are also off when stderr is not a terminal)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kubectl-pvbackup;cleanup' {
            [CompletionResult]::new('--to', '--to', [CompletionResultType]::ParameterName, 'Clean up this backup destination instead of the cluster (a directory, s3://, az://, gs://)')
            [CompletionResult]::new('--older-than', '--older-than', [CompletionResultType]::ParameterName, 'With --to: remove only leftovers untouched for this long (e.g. 12h, 7d); the default outlasts any running backup, whose files must stay')
            [CompletionResult]::new('--endpoint', '--endpoint', [CompletionResultType]::ParameterName, 'Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)')
            [CompletionResult]::new('--kubeconfig', '--kubeconfig', [CompletionResultType]::ParameterName, 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
            [CompletionResult]::new('--context', '--context', [CompletionResultType]::ParameterName, 'The kubeconfig context to use')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('--namespace', '--namespace', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('-y', '-y', [CompletionResultType]::ParameterName, 'Do not ask for confirmation')
            [CompletionResult]::new('--yes', '--yes', [CompletionResultType]::ParameterName, 'Do not ask for confirmation')
            [CompletionResult]::new('--dry-run', '--dry-run', [CompletionResultType]::ParameterName, 'With --to: list what would be removed; remove nothing')
            [CompletionResult]::new('-A', '-A ', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('--all-namespaces', '--all-namespaces', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--no-progress', '--no-progress', [CompletionResultType]::ParameterName, 'No progress bars (they are also off when stderr is not a terminal)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kubectl-pvbackup;prune' {
            [CompletionResult]::new('--keep-last', '--keep-last', [CompletionResultType]::ParameterName, 'Keep the N newest backups of each PVC')
            [CompletionResult]::new('--keep-hourly', '--keep-hourly', [CompletionResultType]::ParameterName, 'Keep the newest backup of each of the last N hours that hold one')
            [CompletionResult]::new('--keep-daily', '--keep-daily', [CompletionResultType]::ParameterName, 'Keep the newest backup of each of the last N days (UTC) that hold one')
            [CompletionResult]::new('--keep-weekly', '--keep-weekly', [CompletionResultType]::ParameterName, 'Keep the newest backup of each of the last N ISO weeks that hold one')
            [CompletionResult]::new('--keep-monthly', '--keep-monthly', [CompletionResultType]::ParameterName, 'Keep the newest backup of each of the last N months (UTC) that hold one')
            [CompletionResult]::new('--older-than', '--older-than', [CompletionResultType]::ParameterName, 'Remove leftovers of interrupted backups only once untouched for this long (e.g. 12h, 7d); the default outlasts any running backup, whose files must stay')
            [CompletionResult]::new('--endpoint', '--endpoint', [CompletionResultType]::ParameterName, 'Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)')
            [CompletionResult]::new('--kubeconfig', '--kubeconfig', [CompletionResultType]::ParameterName, 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
            [CompletionResult]::new('--context', '--context', [CompletionResultType]::ParameterName, 'The kubeconfig context to use')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('--namespace', '--namespace', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--dry-run', '--dry-run', [CompletionResultType]::ParameterName, 'Show what would be kept and removed; remove nothing')
            [CompletionResult]::new('-y', '-y', [CompletionResultType]::ParameterName, 'Do not ask for confirmation')
            [CompletionResult]::new('--yes', '--yes', [CompletionResultType]::ParameterName, 'Do not ask for confirmation')
            [CompletionResult]::new('-A', '-A ', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('--all-namespaces', '--all-namespaces', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--no-progress', '--no-progress', [CompletionResultType]::ParameterName, 'No progress bars (they are also off when stderr is not a terminal)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kubectl-pvbackup;version' {
            [CompletionResult]::new('--kubeconfig', '--kubeconfig', [CompletionResultType]::ParameterName, 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
            [CompletionResult]::new('--context', '--context', [CompletionResultType]::ParameterName, 'The kubeconfig context to use')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('--namespace', '--namespace', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('-A', '-A ', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('--all-namespaces', '--all-namespaces', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--no-progress', '--no-progress', [CompletionResultType]::ParameterName, 'No progress bars (they are also off when stderr is not a terminal)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kubectl-pvbackup;completion' {
            [CompletionResult]::new('--kubeconfig', '--kubeconfig', [CompletionResultType]::ParameterName, 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
            [CompletionResult]::new('--context', '--context', [CompletionResultType]::ParameterName, 'The kubeconfig context to use')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('--namespace', '--namespace', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('-A', '-A ', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('--all-namespaces', '--all-namespaces', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--no-progress', '--no-progress', [CompletionResultType]::ParameterName, 'No progress bars (they are also off when stderr is not a terminal)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kubectl-pvbackup;drill' {
            [CompletionResult]::new('--from', '--from', [CompletionResultType]::ParameterName, 'Where the backup lives, when BACKUP is an id')
            [CompletionResult]::new('--storage-class', '--storage-class', [CompletionResultType]::ParameterName, 'StorageClass of the scratch PVC (default: the backed-up PVC''s)')
            [CompletionResult]::new('--size', '--size', [CompletionResultType]::ParameterName, 'Size of the scratch PVC, e.g. 2Gi (default: the backed-up PVC''s)')
            [CompletionResult]::new('--image', '--image', [CompletionResultType]::ParameterName, 'Helper image (any image with busybox-compatible sh, tar, find, stat, xargs, sha256sum, awk)')
            [CompletionResult]::new('--run-as-user', '--run-as-user', [CompletionResultType]::ParameterName, 'Run the helper as this UID instead of root (for PodSecurity `restricted` namespaces)')
            [CompletionResult]::new('--pod-timeout', '--pod-timeout', [CompletionResultType]::ParameterName, 'Give up when the helper pod is not running after this many seconds')
            [CompletionResult]::new('--retries', '--retries', [CompletionResultType]::ParameterName, 'Retries per PVC after a transient failure (connection reset, API outage or 5xx/429, helper pod evicted or killed, stalled stream); 0 turns retries off')
            [CompletionResult]::new('--retry-timeout', '--retry-timeout', [CompletionResultType]::ParameterName, 'Stop retrying once this much time has passed since the PVC''s first failure (e.g. 30s, 5m)')
            [CompletionResult]::new('--stall-timeout', '--stall-timeout', [CompletionResultType]::ParameterName, 'Declare a data stream dead when no byte moves for this long (e.g. 60s, 2m)')
            [CompletionResult]::new('--identity', '--identity', [CompletionResultType]::ParameterName, 'Private key to decrypt an encrypted backup with: an age identity file (`age-keygen -o FILE`) or an unencrypted OpenSSH private key. Repeatable')
            [CompletionResult]::new('--endpoint', '--endpoint', [CompletionResultType]::ParameterName, 'Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)')
            [CompletionResult]::new('--kubeconfig', '--kubeconfig', [CompletionResultType]::ParameterName, 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
            [CompletionResult]::new('--context', '--context', [CompletionResultType]::ParameterName, 'The kubeconfig context to use')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('--namespace', '--namespace', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--latest', '--latest', [CompletionResultType]::ParameterName, 'Drill the newest complete backup of NAMESPACE/PVC at --from (what a schedule''s drill runs)')
            [CompletionResult]::new('-A', '-A ', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('--all-namespaces', '--all-namespaces', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--no-progress', '--no-progress', [CompletionResultType]::ParameterName, 'No progress bars (they are also off when stderr is not a terminal)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kubectl-pvbackup;schedule' {
            [CompletionResult]::new('--kubeconfig', '--kubeconfig', [CompletionResultType]::ParameterName, 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
            [CompletionResult]::new('--context', '--context', [CompletionResultType]::ParameterName, 'The kubeconfig context to use')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('--namespace', '--namespace', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('-A', '-A ', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('--all-namespaces', '--all-namespaces', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--no-progress', '--no-progress', [CompletionResultType]::ParameterName, 'No progress bars (they are also off when stderr is not a terminal)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('create', 'create', [CompletionResultType]::ParameterValue, 'Create a schedule: back up the namespace''s PVCs to DEST on a cron schedule')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'List the schedules (CronJobs this plugin made), with their last runs')
            [CompletionResult]::new('delete', 'delete', [CompletionResultType]::ParameterValue, 'Delete a schedule: its CronJobs, ServiceAccount, Role, RoleBinding, Jobs and pods')
            [CompletionResult]::new('run-now', 'run-now', [CompletionResultType]::ParameterValue, 'Start a run of a schedule now, as `kubectl create job --from=cronjob/…` does')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'kubectl-pvbackup;schedule;create' {
            [CompletionResult]::new('--cron', '--cron', [CompletionResultType]::ParameterName, 'When to run, five cron fields (minute hour day-of-month month day-of-week) or @hourly/@daily/@weekly/@monthly, e.g. "0 3 * * *"')
            [CompletionResult]::new('--time-zone', '--time-zone', [CompletionResultType]::ParameterName, 'Time zone of --cron (IANA name, e.g. Europe/Berlin; default: the controller''s, UTC)')
            [CompletionResult]::new('--drill-cron', '--drill-cron', [CompletionResultType]::ParameterName, 'Also drill the newest backup of each named PVC on this schedule (e.g. "0 4 * * 0", weekly): a second CronJob, pvbackup-NAME-drill, that runs `drill --latest`')
            [CompletionResult]::new('--concurrency-policy', '--concurrency-policy', [CompletionResultType]::ParameterName, 'What a run does when the previous one still runs')
            [CompletionResult]::new('--job-timeout', '--job-timeout', [CompletionResultType]::ParameterName, 'Stop a run that takes longer than this (so the next one can start)')
            [CompletionResult]::new('--to', '--to', [CompletionResultType]::ParameterName, 'Destination: s3://bucket/prefix, az://container/prefix or gs://bucket/prefix (a local directory would be inside the job''s pod)')
            [CompletionResult]::new('--mesh', '--mesh', [CompletionResultType]::ParameterName, 'Only PVCs mounted by pods of this mesh')
            [CompletionResult]::new('-l', '-l', [CompletionResultType]::ParameterName, 'Label selector for the pods whose PVCs are backed up')
            [CompletionResult]::new('--selector', '--selector', [CompletionResultType]::ParameterName, 'Label selector for the pods whose PVCs are backed up')
            [CompletionResult]::new('--encrypt-to', '--encrypt-to', [CompletionResultType]::ParameterName, 'Encrypt the backup with age to this recipient: an X25519 key `age1…` or an SSH public key (`ssh-ed25519 …`, `ssh-rsa …`). Repeatable')
            [CompletionResult]::new('--encrypt-to-file', '--encrypt-to-file', [CompletionResultType]::ParameterName, 'Encrypt to every recipient in FILE (one per line, `#` comments; age''s `-R` format). Repeatable')
            [CompletionResult]::new('--compression', '--compression', [CompletionResultType]::ParameterName, 'Compression of the stored archive')
            [CompletionResult]::new('--level', '--level', [CompletionResultType]::ParameterName, 'Compression level (gzip 0-9, zstd 1-19; default: the fastest)')
            [CompletionResult]::new('--snapshot', '--snapshot', [CompletionResultType]::ParameterName, '--snapshot of each run (see `create --help`)')
            [CompletionResult]::new('--keep-last', '--keep-last', [CompletionResultType]::ParameterName, 'Keep the N newest backups of each PVC (prune after each run)')
            [CompletionResult]::new('--keep-hourly', '--keep-hourly', [CompletionResultType]::ParameterName, 'Keep the newest backup of each of the last N hours (prune after each run)')
            [CompletionResult]::new('--keep-daily', '--keep-daily', [CompletionResultType]::ParameterName, 'Keep the newest backup of each of the last N days (prune after each run)')
            [CompletionResult]::new('--keep-weekly', '--keep-weekly', [CompletionResultType]::ParameterName, 'Keep the newest backup of each of the last N ISO weeks (prune after each run)')
            [CompletionResult]::new('--keep-monthly', '--keep-monthly', [CompletionResultType]::ParameterName, 'Keep the newest backup of each of the last N months (prune after each run)')
            [CompletionResult]::new('--credentials-secret', '--credentials-secret', [CompletionResultType]::ParameterName, 'Secret in the namespace whose keys become the job''s environment (e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AZURE_STORAGE_CONNECTION_STRING)')
            [CompletionResult]::new('--service-account-annotation', '--service-account-annotation', [CompletionResultType]::ParameterName, 'Annotation for the job''s ServiceAccount, for workload identity (repeatable), e.g. eks.amazonaws.com/role-arn=ARN, azure.workload.identity/client-id=ID, iam.gke.io/gcp-service-account=EMAIL')
            [CompletionResult]::new('--image', '--image', [CompletionResultType]::ParameterName, 'The plugin image the job runs (default: this version''s)')
            [CompletionResult]::new('--helper-image', '--helper-image', [CompletionResultType]::ParameterName, 'Helper image of each run (create''s --image)')
            [CompletionResult]::new('--run-as-user', '--run-as-user', [CompletionResultType]::ParameterName, 'Run the helpers as this UID (create''s --run-as-user)')
            [CompletionResult]::new('--endpoint', '--endpoint', [CompletionResultType]::ParameterName, 'Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)')
            [CompletionResult]::new('--kubeconfig', '--kubeconfig', [CompletionResultType]::ParameterName, 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
            [CompletionResult]::new('--context', '--context', [CompletionResultType]::ParameterName, 'The kubeconfig context to use')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('--namespace', '--namespace', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--all-pvcs', '--all-pvcs', [CompletionResultType]::ParameterName, 'Every PVC in the namespace, mounted or not, mesh or not')
            [CompletionResult]::new('--dry-run', '--dry-run', [CompletionResultType]::ParameterName, 'Print every object (ServiceAccount, Role, RoleBinding, CronJobs) as YAML (or JSON with -o json) for GitOps; apply nothing')
            [CompletionResult]::new('-A', '-A ', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('--all-namespaces', '--all-namespaces', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--no-progress', '--no-progress', [CompletionResultType]::ParameterName, 'No progress bars (they are also off when stderr is not a terminal)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kubectl-pvbackup;schedule;list' {
            [CompletionResult]::new('--kubeconfig', '--kubeconfig', [CompletionResultType]::ParameterName, 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
            [CompletionResult]::new('--context', '--context', [CompletionResultType]::ParameterName, 'The kubeconfig context to use')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('--namespace', '--namespace', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('-A', '-A ', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('--all-namespaces', '--all-namespaces', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--no-progress', '--no-progress', [CompletionResultType]::ParameterName, 'No progress bars (they are also off when stderr is not a terminal)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kubectl-pvbackup;schedule;delete' {
            [CompletionResult]::new('--kubeconfig', '--kubeconfig', [CompletionResultType]::ParameterName, 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
            [CompletionResult]::new('--context', '--context', [CompletionResultType]::ParameterName, 'The kubeconfig context to use')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('--namespace', '--namespace', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('-A', '-A ', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('--all-namespaces', '--all-namespaces', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--no-progress', '--no-progress', [CompletionResultType]::ParameterName, 'No progress bars (they are also off when stderr is not a terminal)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kubectl-pvbackup;schedule;run-now' {
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'With --wait: give up after this long')
            [CompletionResult]::new('--kubeconfig', '--kubeconfig', [CompletionResultType]::ParameterName, 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)')
            [CompletionResult]::new('--context', '--context', [CompletionResultType]::ParameterName, 'The kubeconfig context to use')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('--namespace', '--namespace', [CompletionResultType]::ParameterName, 'Namespace scope (default: the context''s namespace)')
            [CompletionResult]::new('-o', '-o', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--output', '--output', [CompletionResultType]::ParameterName, 'Output format')
            [CompletionResult]::new('--drill', '--drill', [CompletionResultType]::ParameterName, 'Run the schedule''s drill (its --drill-cron CronJob) instead of its backup')
            [CompletionResult]::new('--wait', '--wait', [CompletionResultType]::ParameterName, 'Wait until the run ends; exit 0 when it succeeded, 1 when it failed')
            [CompletionResult]::new('-A', '-A ', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('--all-namespaces', '--all-namespaces', [CompletionResultType]::ParameterName, 'Look in every namespace')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More logs on stderr (-v, -vv, -vvv)')
            [CompletionResult]::new('--no-progress', '--no-progress', [CompletionResultType]::ParameterName, 'No progress bars (they are also off when stderr is not a terminal)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kubectl-pvbackup;schedule;help' {
            [CompletionResult]::new('create', 'create', [CompletionResultType]::ParameterValue, 'Create a schedule: back up the namespace''s PVCs to DEST on a cron schedule')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'List the schedules (CronJobs this plugin made), with their last runs')
            [CompletionResult]::new('delete', 'delete', [CompletionResultType]::ParameterValue, 'Delete a schedule: its CronJobs, ServiceAccount, Role, RoleBinding, Jobs and pods')
            [CompletionResult]::new('run-now', 'run-now', [CompletionResultType]::ParameterValue, 'Start a run of a schedule now, as `kubectl create job --from=cronjob/…` does')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'kubectl-pvbackup;schedule;help;create' {
            break
        }
        'kubectl-pvbackup;schedule;help;list' {
            break
        }
        'kubectl-pvbackup;schedule;help;delete' {
            break
        }
        'kubectl-pvbackup;schedule;help;run-now' {
            break
        }
        'kubectl-pvbackup;schedule;help;help' {
            break
        }
        'kubectl-pvbackup;help' {
            [CompletionResult]::new('discover', 'discover', [CompletionResultType]::ParameterValue, 'List pods that run a service-mesh proxy and the PVCs they mount')
            [CompletionResult]::new('create', 'create', [CompletionResultType]::ParameterValue, 'Back up PVCs to a destination through a short-lived helper pod')
            [CompletionResult]::new('verify', 'verify', [CompletionResultType]::ParameterValue, 'Check an archive against its manifest (offline, no cluster needed)')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'List the backups at a destination')
            [CompletionResult]::new('inspect', 'inspect', [CompletionResultType]::ParameterValue, 'Show a backup''s manifest')
            [CompletionResult]::new('restore', 'restore', [CompletionResultType]::ParameterValue, 'Restore a backup into a PVC, all-or-nothing')
            [CompletionResult]::new('cleanup', 'cleanup', [CompletionResultType]::ParameterValue, 'Delete what interrupted runs left: helper pods, or (--to) partial backups at DEST')
            [CompletionResult]::new('prune', 'prune', [CompletionResultType]::ParameterValue, 'Remove the backups at DEST a retention policy does not keep (restic-style --keep-*)')
            [CompletionResult]::new('version', 'version', [CompletionResultType]::ParameterValue, 'Print version, git commit and build target')
            [CompletionResult]::new('completion', 'completion', [CompletionResultType]::ParameterValue, 'Print a shell completion script for kubectl-pvbackup')
            [CompletionResult]::new('drill', 'drill', [CompletionResultType]::ParameterValue, 'Test-restore a backup into a scratch PVC, verify it in the cluster, delete the PVC')
            [CompletionResult]::new('schedule', 'schedule', [CompletionResultType]::ParameterValue, 'Back up on a schedule, in the cluster: a CronJob that runs this plugin''s image')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'kubectl-pvbackup;help;discover' {
            break
        }
        'kubectl-pvbackup;help;create' {
            break
        }
        'kubectl-pvbackup;help;verify' {
            break
        }
        'kubectl-pvbackup;help;list' {
            break
        }
        'kubectl-pvbackup;help;inspect' {
            break
        }
        'kubectl-pvbackup;help;restore' {
            break
        }
        'kubectl-pvbackup;help;cleanup' {
            break
        }
        'kubectl-pvbackup;help;prune' {
            break
        }
        'kubectl-pvbackup;help;version' {
            break
        }
        'kubectl-pvbackup;help;completion' {
            break
        }
        'kubectl-pvbackup;help;drill' {
            break
        }
        'kubectl-pvbackup;help;schedule' {
            [CompletionResult]::new('create', 'create', [CompletionResultType]::ParameterValue, 'Create a schedule: back up the namespace''s PVCs to DEST on a cron schedule')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'List the schedules (CronJobs this plugin made), with their last runs')
            [CompletionResult]::new('delete', 'delete', [CompletionResultType]::ParameterValue, 'Delete a schedule: its CronJobs, ServiceAccount, Role, RoleBinding, Jobs and pods')
            [CompletionResult]::new('run-now', 'run-now', [CompletionResultType]::ParameterValue, 'Start a run of a schedule now, as `kubectl create job --from=cronjob/…` does')
            break
        }
        'kubectl-pvbackup;help;schedule;create' {
            break
        }
        'kubectl-pvbackup;help;schedule;list' {
            break
        }
        'kubectl-pvbackup;help;schedule;delete' {
            break
        }
        'kubectl-pvbackup;help;schedule;run-now' {
            break
        }
        'kubectl-pvbackup;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}

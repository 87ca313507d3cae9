# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_kubectl_pvbackup_global_optspecs
    string join \n kubeconfig= context= n/namespace= A/all-namespaces o/output= v/verbose no-progress h/help V/version
end

function __fish_kubectl_pvbackup_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_kubectl_pvbackup_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_kubectl_pvbackup_using_subcommand
    set -l cmd (__fish_kubectl_pvbackup_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -l context -d 'The kubeconfig context to use' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -s n -l namespace -d 'Namespace scope (default: the context\'s namespace)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -s o -l output -d 'Output format' -r -f -a "table\t''
wide\t''
json\t''
yaml\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -s A -l all-namespaces -d 'Look in every namespace'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -s v -l verbose -d 'More logs on stderr (-v, -vv, -vvv)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -l no-progress -d 'No progress bars (they are also off when stderr is not a terminal)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -s h -l help -d 'Print help'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -s V -l version -d 'Print version'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -f -a "discover" -d 'List pods that run a service-mesh proxy and the PVCs they mount'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -f -a "create" -d 'Back up PVCs to a destination through a short-lived helper pod'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -f -a "verify" -d 'Check an archive against its manifest (offline, no cluster needed)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -f -a "list" -d 'List the backups at a destination'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -f -a "inspect" -d 'Show a backup\'s manifest'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -f -a "restore" -d 'Restore a backup into a PVC, all-or-nothing'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -f -a "cleanup" -d 'Delete what interrupted runs left: helper pods, or (--to) partial backups at DEST'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -f -a "prune" -d 'Remove the backups at DEST a retention policy does not keep (restic-style --keep-*)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -f -a "version" -d 'Print version, git commit and build target'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -f -a "completion" -d 'Print a shell completion script for kubectl-pvbackup'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -f -a "drill" -d 'Test-restore a backup into a scratch PVC, verify it in the cluster, delete the PVC'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -f -a "schedule" -d 'Back up on a schedule, in the cluster: a CronJob that runs this plugin\'s image'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand discover" -s l -l selector -d 'Label selector for pods (e.g. app=orders-db)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand discover" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand discover" -l context -d 'The kubeconfig context to use' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand discover" -s n -l namespace -d 'Namespace scope (default: the context\'s namespace)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand discover" -s o -l output -d 'Output format' -r -f -a "table\t''
wide\t''
json\t''
yaml\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand discover" -l all-pods -d 'Also list pods without a mesh proxy'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand discover" -s A -l all-namespaces -d 'Look in every namespace'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand discover" -s v -l verbose -d 'More logs on stderr (-v, -vv, -vvv)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand discover" -l no-progress -d 'No progress bars (they are also off when stderr is not a terminal)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand discover" -s h -l help -d 'Print help'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand discover" -s V -l version -d 'Print version'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l to -d 'Destination: a local directory (or file:///path), s3://bucket/prefix, az://container/prefix or gs://bucket/prefix' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l mesh -d 'Only PVCs mounted by pods of this mesh' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -s l -l selector -d 'Label selector for the pods whose PVCs are backed up' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l compression -d 'Compression of the stored archive' -r -f -a "gzip\t''
zstd\t''
none\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l level -d 'Compression level (gzip 0-9, zstd 1-19; default: the fastest)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l snapshot -d 'Copy from a CSI VolumeSnapshot (or a clone) of the PVC: `auto` when the PVC\'s driver has a VolumeSnapshotClass, `always` or fail, `never` (read the live volume)' -r -f -a "auto\t''
always\t''
never\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l snapshot-class -d 'VolumeSnapshotClass to use instead of the driver\'s default' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l snapshot-timeout -d 'How long a snapshot may take to be cut and ready, and its temporary PVC to bind' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l pre-hook -d 'Command (sh -c) to run in the workload\'s container before the copy is cut' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l post-hook -d 'Command (sh -c) to run in the workload\'s container once the copy is cut, even on failure' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l hook-container -d 'Container for the hooks (default: the first non-proxy container that mounts the PVC)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l hook-timeout -d 'Give up on a hook after this long' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l hook-on-error -d 'What a failing hook does: `fail` stops this PVC\'s backup, `continue` goes on' -r -f -a "fail\t''
continue\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l image -d 'Helper image (any image with busybox-compatible sh, tar, find, stat, xargs, sha256sum, awk)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l run-as-user -d 'Run the helper as this UID instead of root (for PodSecurity `restricted` namespaces)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l pod-timeout -d 'Give up when the helper pod is not running after this many seconds' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l retries -d 'Retries per PVC after a transient failure (connection reset, API outage or 5xx/429, helper pod evicted or killed, stalled stream); 0 turns retries off' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l retry-timeout -d 'Stop retrying once this much time has passed since the PVC\'s first failure (e.g. 30s, 5m)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l stall-timeout -d 'Declare a data stream dead when no byte moves for this long (e.g. 60s, 2m)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l parallel -d 'Back up this many PVCs at once' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l max-per-node -d 'At most this many helper pods on any one node at a time' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l streams -d 'Exec streams per volume, `auto` or 1-16; several fill a distant link that one stream cannot, into one archive. auto: one inside the cluster or below 64 MiB, else measured: one if a stream carries 100 MB/s, else enough to make that up and one more (at most one per 32 MiB, and 4)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l encrypt-to -d 'Encrypt the backup with age to this recipient: an X25519 key `age1…` or an SSH public key (`ssh-ed25519 …`, `ssh-rsa …`). Repeatable' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l encrypt-to-file -d 'Encrypt to every recipient in FILE (one per line, `#` comments; age\'s `-R` format). Repeatable' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l endpoint -d 'Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l part-size -d 'Multipart upload part size in MiB (5-512; default 8). Memory is about 6 parts per PVC' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l context -d 'The kubeconfig context to use' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -s n -l namespace -d 'Namespace scope (default: the context\'s namespace)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -s o -l output -d 'Output format' -r -f -a "table\t''
wide\t''
json\t''
yaml\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l all-pvcs -d 'Every PVC in scope, mounted or not, mesh or not'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l require-consistent -d 'Fail (and write nothing) when a live copy saw files change while it read them'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l dry-run -d 'Print the plan and the helper pod spec; create nothing'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -s A -l all-namespaces -d 'Look in every namespace'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -s v -l verbose -d 'More logs on stderr (-v, -vv, -vvv)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -l no-progress -d 'No progress bars (they are also off when stderr is not a terminal)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -s h -l help -d 'Print help'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand create" -s V -l version -d 'Print version'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand verify" -l from -d 'Where the backup lives, when BACKUP is an id' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand verify" -l identity -d 'Private key to decrypt an encrypted backup with: an age identity file (`age-keygen -o FILE`) or an unencrypted OpenSSH private key. Repeatable' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand verify" -l endpoint -d 'Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand verify" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand verify" -l context -d 'The kubeconfig context to use' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand verify" -s n -l namespace -d 'Namespace scope (default: the context\'s namespace)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand verify" -s o -l output -d 'Output format' -r -f -a "table\t''
wide\t''
json\t''
yaml\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand verify" -s A -l all-namespaces -d 'Look in every namespace'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand verify" -s v -l verbose -d 'More logs on stderr (-v, -vv, -vvv)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand verify" -l no-progress -d 'No progress bars (they are also off when stderr is not a terminal)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand verify" -s h -l help -d 'Print help'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand verify" -s V -l version -d 'Print version'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand list" -l endpoint -d 'Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand list" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand list" -l context -d 'The kubeconfig context to use' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand list" -s n -l namespace -d 'Namespace scope (default: the context\'s namespace)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand list" -s o -l output -d 'Output format' -r -f -a "table\t''
wide\t''
json\t''
yaml\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand list" -s A -l all-namespaces -d 'Look in every namespace'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand list" -s v -l verbose -d 'More logs on stderr (-v, -vv, -vvv)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand list" -l no-progress -d 'No progress bars (they are also off when stderr is not a terminal)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand list" -s h -l help -d 'Print help'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand list" -s V -l version -d 'Print version'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand inspect" -l from -d 'Where the backup lives, when BACKUP is an id' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand inspect" -l identity -d 'Private key to decrypt an encrypted backup with: an age identity file (`age-keygen -o FILE`) or an unencrypted OpenSSH private key. Repeatable' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand inspect" -l endpoint -d 'Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand inspect" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand inspect" -l context -d 'The kubeconfig context to use' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand inspect" -s n -l namespace -d 'Namespace scope (default: the context\'s namespace)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand inspect" -s o -l output -d 'Output format' -r -f -a "table\t''
wide\t''
json\t''
yaml\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand inspect" -l files -d 'List every entry'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand inspect" -s A -l all-namespaces -d 'Look in every namespace'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand inspect" -s v -l verbose -d 'More logs on stderr (-v, -vv, -vvv)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand inspect" -l no-progress -d 'No progress bars (they are also off when stderr is not a terminal)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand inspect" -s h -l help -d 'Print help'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand inspect" -s V -l version -d 'Print version'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l from -d 'Where the backup lives, when BACKUP is an id' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l to-pvc -d 'Target PVC (default: the PVC the backup was taken from)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l storage-class -d 'With --create-pvc: use this StorageClass' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l size -d 'With --create-pvc: request this size (e.g. 2Gi)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l mode -d 'How the backup meets what is already on the volume' -r -f -a "replace\t'Afterwards the volume holds exactly what the backup holds'
merge\t'Overwrite the backup\'s paths and keep everything else'"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l snapshot -d 'With --in-place: first cut a VolumeSnapshot of the target to roll back to: `auto` when its driver has a VolumeSnapshotClass, `always` or refuse, `never`' -r -f -a "auto\t''
always\t''
never\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l keep-snapshot -d 'With --in-place: keep that snapshot after a successful restore; --keep-snapshot=false deletes it (it is always kept after a failure)' -r -f -a "true\t''
false\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l snapshot-class -d 'With --in-place: VolumeSnapshotClass to use instead of the driver\'s default' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l snapshot-timeout -d 'With --in-place: how long the snapshot may take to be cut and ready' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l image -d 'Helper image (any image with busybox-compatible sh, tar, find, stat, xargs, sha256sum, awk)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l run-as-user -d 'Run the helper as this UID instead of root (for PodSecurity `restricted` namespaces)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l pod-timeout -d 'Give up when the helper pod is not running after this many seconds' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l retries -d 'Retries per PVC after a transient failure (connection reset, API outage or 5xx/429, helper pod evicted or killed, stalled stream); 0 turns retries off' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l retry-timeout -d 'Stop retrying once this much time has passed since the PVC\'s first failure (e.g. 30s, 5m)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l stall-timeout -d 'Declare a data stream dead when no byte moves for this long (e.g. 60s, 2m)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l identity -d 'Private key to decrypt an encrypted backup with: an age identity file (`age-keygen -o FILE`) or an unencrypted OpenSSH private key. Repeatable' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l endpoint -d 'Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l context -d 'The kubeconfig context to use' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -s n -l namespace -d 'Namespace scope (default: the context\'s namespace)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -s o -l output -d 'Output format' -r -f -a "table\t''
wide\t''
json\t''
yaml\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l create-pvc -d 'Create the target PVC from the manifest\'s spec'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -s y -l yes -d 'Do not ask for confirmation'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l dry-run -d 'Print the plan; change nothing'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l force -d 'Restore even while other pods mount the PVC'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l in-place -d 'Delete the PVC\'s content, then extract straight into it; no rollback: a failure leaves the volume partly restored'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -s A -l all-namespaces -d 'Look in every namespace'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -s v -l verbose -d 'More logs on stderr (-v, -vv, -vvv)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -l no-progress -d 'No progress bars (they are also off when stderr is not a terminal)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand restore" -s V -l version -d 'Print version'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand cleanup" -l to -d 'Clean up this backup destination instead of the cluster (a directory, s3://, az://, gs://)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand cleanup" -l older-than -d 'With --to: remove only leftovers untouched for this long (e.g. 12h, 7d); the default outlasts any running backup, whose files must stay' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand cleanup" -l endpoint -d 'Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand cleanup" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand cleanup" -l context -d 'The kubeconfig context to use' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand cleanup" -s n -l namespace -d 'Namespace scope (default: the context\'s namespace)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand cleanup" -s o -l output -d 'Output format' -r -f -a "table\t''
wide\t''
json\t''
yaml\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand cleanup" -s y -l yes -d 'Do not ask for confirmation'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand cleanup" -l dry-run -d 'With --to: list what would be removed; remove nothing'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand cleanup" -s A -l all-namespaces -d 'Look in every namespace'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand cleanup" -s v -l verbose -d 'More logs on stderr (-v, -vv, -vvv)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand cleanup" -l no-progress -d 'No progress bars (they are also off when stderr is not a terminal)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand cleanup" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand cleanup" -s V -l version -d 'Print version'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand prune" -l keep-last -d 'Keep the N newest backups of each PVC' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand prune" -l keep-hourly -d 'Keep the newest backup of each of the last N hours that hold one' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand prune" -l keep-daily -d 'Keep the newest backup of each of the last N days (UTC) that hold one' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand prune" -l keep-weekly -d 'Keep the newest backup of each of the last N ISO weeks that hold one' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand prune" -l keep-monthly -d 'Keep the newest backup of each of the last N months (UTC) that hold one' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand prune" -l older-than -d 'Remove leftovers of interrupted backups only once untouched for this long (e.g. 12h, 7d); the default outlasts any running backup, whose files must stay' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand prune" -l endpoint -d 'Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand prune" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand prune" -l context -d 'The kubeconfig context to use' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand prune" -s n -l namespace -d 'Namespace scope (default: the context\'s namespace)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand prune" -s o -l output -d 'Output format' -r -f -a "table\t''
wide\t''
json\t''
yaml\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand prune" -l dry-run -d 'Show what would be kept and removed; remove nothing'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand prune" -s y -l yes -d 'Do not ask for confirmation'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand prune" -s A -l all-namespaces -d 'Look in every namespace'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand prune" -s v -l verbose -d 'More logs on stderr (-v, -vv, -vvv)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand prune" -l no-progress -d 'No progress bars (they are also off when stderr is not a terminal)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand prune" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand prune" -s V -l version -d 'Print version'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand version" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand version" -l context -d 'The kubeconfig context to use' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand version" -s n -l namespace -d 'Namespace scope (default: the context\'s namespace)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand version" -s o -l output -d 'Output format' -r -f -a "table\t''
wide\t''
json\t''
yaml\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand version" -s A -l all-namespaces -d 'Look in every namespace'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand version" -s v -l verbose -d 'More logs on stderr (-v, -vv, -vvv)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand version" -l no-progress -d 'No progress bars (they are also off when stderr is not a terminal)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand version" -s h -l help -d 'Print help'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand version" -s V -l version -d 'Print version'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand completion" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand completion" -l context -d 'The kubeconfig context to use' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand completion" -s n -l namespace -d 'Namespace scope (default: the context\'s namespace)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand completion" -s o -l output -d 'Output format' -r -f -a "table\t''
wide\t''
json\t''
yaml\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand completion" -s A -l all-namespaces -d 'Look in every namespace'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand completion" -s v -l verbose -d 'More logs on stderr (-v, -vv, -vvv)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand completion" -l no-progress -d 'No progress bars (they are also off when stderr is not a terminal)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand completion" -s h -l help -d 'Print help'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand completion" -s V -l version -d 'Print version'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -l from -d 'Where the backup lives, when BACKUP is an id' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -l storage-class -d 'StorageClass of the scratch PVC (default: the backed-up PVC\'s)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -l size -d 'Size of the scratch PVC, e.g. 2Gi (default: the backed-up PVC\'s)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -l image -d 'Helper image (any image with busybox-compatible sh, tar, find, stat, xargs, sha256sum, awk)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -l run-as-user -d 'Run the helper as this UID instead of root (for PodSecurity `restricted` namespaces)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -l pod-timeout -d 'Give up when the helper pod is not running after this many seconds' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -l retries -d 'Retries per PVC after a transient failure (connection reset, API outage or 5xx/429, helper pod evicted or killed, stalled stream); 0 turns retries off' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -l retry-timeout -d 'Stop retrying once this much time has passed since the PVC\'s first failure (e.g. 30s, 5m)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -l stall-timeout -d 'Declare a data stream dead when no byte moves for this long (e.g. 60s, 2m)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -l identity -d 'Private key to decrypt an encrypted backup with: an age identity file (`age-keygen -o FILE`) or an unencrypted OpenSSH private key. Repeatable' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -l endpoint -d 'Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -l context -d 'The kubeconfig context to use' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -s n -l namespace -d 'Namespace scope (default: the context\'s namespace)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -s o -l output -d 'Output format' -r -f -a "table\t''
wide\t''
json\t''
yaml\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -l latest -d 'Drill the newest complete backup of NAMESPACE/PVC at --from (what a schedule\'s drill runs)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -s A -l all-namespaces -d 'Look in every namespace'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -s v -l verbose -d 'More logs on stderr (-v, -vv, -vvv)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -l no-progress -d 'No progress bars (they are also off when stderr is not a terminal)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand drill" -s V -l version -d 'Print version'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and not __fish_seen_subcommand_from create list delete run-now help" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and not __fish_seen_subcommand_from create list delete run-now help" -l context -d 'The kubeconfig context to use' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and not __fish_seen_subcommand_from create list delete run-now help" -s n -l namespace -d 'Namespace scope (default: the context\'s namespace)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and not __fish_seen_subcommand_from create list delete run-now help" -s o -l output -d 'Output format' -r -f -a "table\t''
wide\t''
json\t''
yaml\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and not __fish_seen_subcommand_from create list delete run-now help" -s A -l all-namespaces -d 'Look in every namespace'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and not __fish_seen_subcommand_from create list delete run-now help" -s v -l verbose -d 'More logs on stderr (-v, -vv, -vvv)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and not __fish_seen_subcommand_from create list delete run-now help" -l no-progress -d 'No progress bars (they are also off when stderr is not a terminal)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and not __fish_seen_subcommand_from create list delete run-now help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and not __fish_seen_subcommand_from create list delete run-now help" -s V -l version -d 'Print version'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and not __fish_seen_subcommand_from create list delete run-now help" -f -a "create" -d 'Create a schedule: back up the namespace\'s PVCs to DEST on a cron schedule'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and not __fish_seen_subcommand_from create list delete run-now help" -f -a "list" -d 'List the schedules (CronJobs this plugin made), with their last runs'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and not __fish_seen_subcommand_from create list delete run-now help" -f -a "delete" -d 'Delete a schedule: its CronJobs, ServiceAccount, Role, RoleBinding, Jobs and pods'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and not __fish_seen_subcommand_from create list delete run-now help" -f -a "run-now" -d 'Start a run of a schedule now, as `kubectl create job --from=cronjob/…` does'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and not __fish_seen_subcommand_from create list delete run-now help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l cron -d 'When to run, five cron fields (minute hour day-of-month month day-of-week) or @hourly/@daily/@weekly/@monthly, e.g. "0 3 * * *"' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l time-zone -d 'Time zone of --cron (IANA name, e.g. Europe/Berlin; default: the controller\'s, UTC)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l drill-cron -d 'Also drill the newest backup of each named PVC on this schedule (e.g. "0 4 * * 0", weekly): a second CronJob, pvbackup-NAME-drill, that runs `drill --latest`' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l concurrency-policy -d 'What a run does when the previous one still runs' -r -f -a "allow\t'Runs may overlap'
forbid\t'A run does not start while the previous one runs (it is skipped)'
replace\t'A new run stops the previous one'"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l job-timeout -d 'Stop a run that takes longer than this (so the next one can start)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l to -d 'Destination: s3://bucket/prefix, az://container/prefix or gs://bucket/prefix (a local directory would be inside the job\'s pod)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l mesh -d 'Only PVCs mounted by pods of this mesh' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -s l -l selector -d 'Label selector for the pods whose PVCs are backed up' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l encrypt-to -d 'Encrypt the backup with age to this recipient: an X25519 key `age1…` or an SSH public key (`ssh-ed25519 …`, `ssh-rsa …`). Repeatable' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l encrypt-to-file -d 'Encrypt to every recipient in FILE (one per line, `#` comments; age\'s `-R` format). Repeatable' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l compression -d 'Compression of the stored archive' -r -f -a "gzip\t''
zstd\t''
none\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l level -d 'Compression level (gzip 0-9, zstd 1-19; default: the fastest)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l snapshot -d '--snapshot of each run (see `create --help`)' -r -f -a "auto\t''
always\t''
never\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l keep-last -d 'Keep the N newest backups of each PVC (prune after each run)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l keep-hourly -d 'Keep the newest backup of each of the last N hours (prune after each run)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l keep-daily -d 'Keep the newest backup of each of the last N days (prune after each run)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l keep-weekly -d 'Keep the newest backup of each of the last N ISO weeks (prune after each run)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l keep-monthly -d 'Keep the newest backup of each of the last N months (prune after each run)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l credentials-secret -d 'Secret in the namespace whose keys become the job\'s environment (e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AZURE_STORAGE_CONNECTION_STRING)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l service-account-annotation -d 'Annotation for the job\'s ServiceAccount, for workload identity (repeatable), e.g. eks.amazonaws.com/role-arn=ARN, azure.workload.identity/client-id=ID, iam.gke.io/gcp-service-account=EMAIL' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l image -d 'The plugin image the job runs (default: this version\'s)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l helper-image -d 'Helper image of each run (create\'s --image)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l run-as-user -d 'Run the helpers as this UID (create\'s --run-as-user)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l endpoint -d 'Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l context -d 'The kubeconfig context to use' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -s n -l namespace -d 'Namespace scope (default: the context\'s namespace)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -s o -l output -d 'Output format' -r -f -a "table\t''
wide\t''
json\t''
yaml\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l all-pvcs -d 'Every PVC in the namespace, mounted or not, mesh or not'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l dry-run -d 'Print every object (ServiceAccount, Role, RoleBinding, CronJobs) as YAML (or JSON with -o json) for GitOps; apply nothing'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -s A -l all-namespaces -d 'Look in every namespace'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -s v -l verbose -d 'More logs on stderr (-v, -vv, -vvv)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -l no-progress -d 'No progress bars (they are also off when stderr is not a terminal)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from create" -s V -l version -d 'Print version'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from list" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from list" -l context -d 'The kubeconfig context to use' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from list" -s n -l namespace -d 'Namespace scope (default: the context\'s namespace)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from list" -s o -l output -d 'Output format' -r -f -a "table\t''
wide\t''
json\t''
yaml\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from list" -s A -l all-namespaces -d 'Look in every namespace'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from list" -s v -l verbose -d 'More logs on stderr (-v, -vv, -vvv)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from list" -l no-progress -d 'No progress bars (they are also off when stderr is not a terminal)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from delete" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from delete" -l context -d 'The kubeconfig context to use' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from delete" -s n -l namespace -d 'Namespace scope (default: the context\'s namespace)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from delete" -s o -l output -d 'Output format' -r -f -a "table\t''
wide\t''
json\t''
yaml\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from delete" -s A -l all-namespaces -d 'Look in every namespace'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from delete" -s v -l verbose -d 'More logs on stderr (-v, -vv, -vvv)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from delete" -l no-progress -d 'No progress bars (they are also off when stderr is not a terminal)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from delete" -s V -l version -d 'Print version'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from run-now" -l timeout -d 'With --wait: give up after this long' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from run-now" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)' -r -F
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from run-now" -l context -d 'The kubeconfig context to use' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from run-now" -s n -l namespace -d 'Namespace scope (default: the context\'s namespace)' -r
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from run-now" -s o -l output -d 'Output format' -r -f -a "table\t''
wide\t''
json\t''
yaml\t''"
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from run-now" -l drill -d 'Run the schedule\'s drill (its --drill-cron CronJob) instead of its backup'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from run-now" -l wait -d 'Wait until the run ends; exit 0 when it succeeded, 1 when it failed'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from run-now" -s A -l all-namespaces -d 'Look in every namespace'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from run-now" -s v -l verbose -d 'More logs on stderr (-v, -vv, -vvv)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from run-now" -l no-progress -d 'No progress bars (they are also off when stderr is not a terminal)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from run-now" -s h -l help -d 'Print help'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from run-now" -s V -l version -d 'Print version'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from help" -f -a "create" -d 'Create a schedule: back up the namespace\'s PVCs to DEST on a cron schedule'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from help" -f -a "list" -d 'List the schedules (CronJobs this plugin made), with their last runs'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from help" -f -a "delete" -d 'Delete a schedule: its CronJobs, ServiceAccount, Role, RoleBinding, Jobs and pods'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from help" -f -a "run-now" -d 'Start a run of a schedule now, as `kubectl create job --from=cronjob/…` does'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand schedule; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand help; and not __fish_seen_subcommand_from discover create verify list inspect restore cleanup prune version completion drill schedule help" -f -a "discover" -d 'List pods that run a service-mesh proxy and the PVCs they mount'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand help; and not __fish_seen_subcommand_from discover create verify list inspect restore cleanup prune version completion drill schedule help" -f -a "create" -d 'Back up PVCs to a destination through a short-lived helper pod'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand help; and not __fish_seen_subcommand_from discover create verify list inspect restore cleanup prune version completion drill schedule help" -f -a "verify" -d 'Check an archive against its manifest (offline, no cluster needed)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand help; and not __fish_seen_subcommand_from discover create verify list inspect restore cleanup prune version completion drill schedule help" -f -a "list" -d 'List the backups at a destination'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand help; and not __fish_seen_subcommand_from discover create verify list inspect restore cleanup prune version completion drill schedule help" -f -a "inspect" -d 'Show a backup\'s manifest'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand help; and not __fish_seen_subcommand_from discover create verify list inspect restore cleanup prune version completion drill schedule help" -f -a "restore" -d 'Restore a backup into a PVC, all-or-nothing'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand help; and not __fish_seen_subcommand_from discover create verify list inspect restore cleanup prune version completion drill schedule help" -f -a "cleanup" -d 'Delete what interrupted runs left: helper pods, or (--to) partial backups at DEST'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand help; and not __fish_seen_subcommand_from discover create verify list inspect restore cleanup prune version completion drill schedule help" -f -a "prune" -d 'Remove the backups at DEST a retention policy does not keep (restic-style --keep-*)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand help; and not __fish_seen_subcommand_from discover create verify list inspect restore cleanup prune version completion drill schedule help" -f -a "version" -d 'Print version, git commit and build target'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand help; and not __fish_seen_subcommand_from discover create verify list inspect restore cleanup prune version completion drill schedule help" -f -a "completion" -d 'Print a shell completion script for kubectl-pvbackup'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand help; and not __fish_seen_subcommand_from discover create verify list inspect restore cleanup prune version completion drill schedule help" -f -a "drill" -d 'Test-restore a backup into a scratch PVC, verify it in the cluster, delete the PVC'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand help; and not __fish_seen_subcommand_from discover create verify list inspect restore cleanup prune version completion drill schedule help" -f -a "schedule" -d 'Back up on a schedule, in the cluster: a CronJob that runs this plugin\'s image'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand help; and not __fish_seen_subcommand_from discover create verify list inspect restore cleanup prune version completion drill schedule help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand help; and __fish_seen_subcommand_from schedule" -f -a "create" -d 'Create a schedule: back up the namespace\'s PVCs to DEST on a cron schedule'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand help; and __fish_seen_subcommand_from schedule" -f -a "list" -d 'List the schedules (CronJobs this plugin made), with their last runs'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand help; and __fish_seen_subcommand_from schedule" -f -a "delete" -d 'Delete a schedule: its CronJobs, ServiceAccount, Role, RoleBinding, Jobs and pods'
complete -c kubectl-pvbackup -n "__fish_kubectl_pvbackup_using_subcommand help; and __fish_seen_subcommand_from schedule" -f -a "run-now" -d 'Start a run of a schedule now, as `kubectl create job --from=cronjob/…` does'

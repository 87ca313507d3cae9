//! Every clap type of the plugin. Arguments are turned into plain plans by the `cmd` modules
//! before any work starts; nothing past `cmd` sees clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  # List mesh workloads and the volumes they mount, in every namespace
  kubectl pvbackup discover -A

  # Back up every PVC mounted by an Istio workload in namespace shop
  kubectl pvbackup create -n shop --mesh istio --to ./backups

  # Check an archive against its manifest, without a cluster
  kubectl pvbackup verify ./backups/<id>/shop/data-orders-db-0.manifest.json";

/// `--version`: the same facts as `kubectl pvbackup version` (build.rs records commit and target).
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PVBACKUP_GIT_COMMIT"),
    ", ",
    env!("PVBACKUP_TARGET"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-pvbackup",
    bin_name = "kubectl pvbackup",
    version = LONG_VERSION,
    about = "Back up and restore the PersistentVolumeClaims of service-mesh workloads",
    after_help = EXAMPLES,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace scope (default: the context's namespace)
    #[arg(short = 'n', long, global = true, value_name = "NS")]
    pub namespace: Option<String>,
    /// Look in every namespace
    #[arg(short = 'A', long, global = true, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Output format
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// More logs on stderr (-v, -vv, -vvv)
    #[arg(short = 'v', long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress bars (they are also off when stderr is not a terminal)
    #[arg(long, global = true)]
    pub no_progress: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Wide,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List pods that run a service-mesh proxy and the PVCs they mount
    #[command(after_help = DISCOVER_EXAMPLES)]
    Discover(DiscoverArgs),
    /// Back up PVCs to a destination through a short-lived helper pod
    #[command(after_help = CREATE_EXAMPLES)]
    Create(CreateArgs),
    /// Check an archive against its manifest (offline, no cluster needed)
    #[command(after_help = VERIFY_EXAMPLES)]
    Verify(VerifyArgs),
    /// List the backups at a destination
    #[command(after_help = LIST_EXAMPLES)]
    List(ListArgs),
    /// Show a backup's manifest
    #[command(after_help = INSPECT_EXAMPLES)]
    Inspect(InspectArgs),
    /// Restore a backup into a PVC, all-or-nothing
    #[command(after_help = RESTORE_EXAMPLES)]
    Restore(RestoreArgs),
    /// Delete what interrupted runs left: helper pods, or (--to) partial backups at DEST
    ///
    /// Without --to: deletes the plugin's helper pods (running or stopped) a killed client left
    /// in the cluster, waits until they are gone, then checks the volume of every restore
    /// helper it found in a fresh helper pod: a restore that was interrupted half-way is rolled
    /// back (the volume holds what it held before it; a restore into an empty volume empties it
    /// again), and what finished restores left is removed. Says what it did for each PVC. With
    /// --to DEST: removes what killed backups left at DEST and no running backup still writes,
    /// i.e. untouched for --older-than: partial files, open S3 multipart uploads, and archives
    /// whose manifest was never written. Complete backups and files of other names are never
    /// touched. Needs no cluster.
    #[command(after_help = CLEANUP_EXAMPLES)]
    Cleanup(CleanupArgs),
    /// Remove the backups at DEST a retention policy does not keep (restic-style --keep-*)
    ///
    /// The policy applies to each namespace/PVC on its own, as restic's forget does: the
    /// newest backup of each of the last N hours/days/weeks/months that hold one (UTC; ISO
    /// weeks), plus the N newest with --keep-last. The newest complete backup of a PVC is never
    /// removed. A backup's manifest is deleted first, so an interrupted prune never leaves a
    /// half-deleted backup listed as complete. Leftovers of interrupted backups untouched for
    /// --older-than go too (as with cleanup --to). Needs no cluster.
    #[command(after_help = PRUNE_EXAMPLES)]
    Prune(PruneArgs),
    /// Print version, git commit and build target
    #[command(after_help = VERSION_EXAMPLES)]
    Version,
    /// Print a shell completion script for kubectl-pvbackup
    #[command(after_help = COMPLETION_EXAMPLES)]
    Completion(CompletionArgs),
    /// Test-restore a backup into a scratch PVC, verify it in the cluster, delete the PVC
    ///
    /// Restores into a new scratch PVC (never an existing one), checks every file's checksum,
    /// mode and owner inside the cluster, reports time-to-restore, throughput and the verdict,
    /// and deletes the scratch PVC and helper pods whatever happens. Exit 0: intact; 3: the
    /// backup does not restore intact; 1: the drill could not run.
    #[command(after_help = DRILL_EXAMPLES)]
    Drill(DrillArgs),
    /// Back up on a schedule, in the cluster: a CronJob that runs this plugin's image
    ///
    /// `schedule create` applies a ServiceAccount, a Role with exactly the permissions a backup
    /// of the namespace needs, a RoleBinding and a CronJob, all named pvbackup-NAME (and with
    /// --drill-cron a drill CronJob, pvbackup-NAME-drill) and labelled
    /// pvbackup.dev/schedule=NAME; `schedule delete` removes them and the Jobs and pods they
    /// made.
    #[command(subcommand, after_help = SCHEDULE_EXAMPLES)]
    Schedule(ScheduleCommand),
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule: back up the namespace's PVCs to DEST on a cron schedule
    #[command(after_help = SCHEDULE_EXAMPLES)]
    Create(Box<ScheduleCreateArgs>),
    /// List the schedules (CronJobs this plugin made), with their last runs
    List,
    /// Delete a schedule: its CronJobs, ServiceAccount, Role, RoleBinding, Jobs and pods
    Delete(ScheduleNameArgs),
    /// Start a run of a schedule now, as `kubectl create job --from=cronjob/…` does
    RunNow(ScheduleRunArgs),
}

#[derive(Debug, Args)]
pub struct ScheduleNameArgs {
    /// The schedule's name (as given to `schedule create`)
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ScheduleRunArgs {
    /// The schedule's name (as given to `schedule create`)
    pub name: String,
    /// Run the schedule's drill (its --drill-cron CronJob) instead of its backup
    #[arg(long)]
    pub drill: bool,
    /// Wait until the run ends; exit 0 when it succeeded, 1 when it failed
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = humantime::parse_duration, requires = "wait")]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConcurrencyArg {
    /// Runs may overlap
    Allow,
    /// A run does not start while the previous one runs (it is skipped)
    Forbid,
    /// A new run stops the previous one
    Replace,
}

#[derive(Debug, Args)]
pub struct ScheduleCreateArgs {
    /// The schedule's name: its objects are called pvbackup-NAME
    pub name: String,
    /// PVCs to back up (NAME in the schedule's namespace); default: every PVC a mesh pod mounts
    pub pvcs: Vec<String>,
    /// When to run, five cron fields (minute hour day-of-month month day-of-week) or
    /// @hourly/@daily/@weekly/@monthly, e.g. "0 3 * * *"
    #[arg(long, value_name = "EXPR", help_heading = "Schedule")]
    pub cron: String,
    /// Time zone of --cron (IANA name, e.g. Europe/Berlin; default: the controller's, UTC)
    #[arg(long, value_name = "TZ", help_heading = "Schedule")]
    pub time_zone: Option<String>,
    /// Also drill the newest backup of each named PVC on this schedule (e.g. "0 4 * * 0",
    /// weekly): a second CronJob, pvbackup-NAME-drill, that runs `drill --latest`
    #[arg(long, value_name = "EXPR", help_heading = "Schedule")]
    pub drill_cron: Option<String>,
    /// What a run does when the previous one still runs
    #[arg(long, value_enum, default_value = "forbid", help_heading = "Schedule")]
    pub concurrency_policy: ConcurrencyArg,
    /// Stop a run that takes longer than this (so the next one can start)
    #[arg(long, default_value = "6h", value_name = "DURATION", value_parser = humantime::parse_duration, help_heading = "Schedule")]
    pub job_timeout: std::time::Duration,
    /// Destination: s3://bucket/prefix, az://container/prefix or gs://bucket/prefix (a local
    /// directory would be inside the job's pod)
    #[arg(long, value_name = "DEST", help_heading = "Destination")]
    pub to: String,
    /// Only PVCs mounted by pods of this mesh
    #[arg(long, value_name = "MESH", help_heading = "Selection")]
    pub mesh: Option<String>,
    /// Label selector for the pods whose PVCs are backed up
    #[arg(short = 'l', long, value_name = "SELECTOR", help_heading = "Selection")]
    pub selector: Option<String>,
    /// Every PVC in the namespace, mounted or not, mesh or not
    #[arg(long, conflicts_with = "mesh", help_heading = "Selection")]
    pub all_pvcs: bool,
    #[command(flatten)]
    pub encrypt: EncryptArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// --snapshot of each run (see `create --help`)
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        value_name = "WHEN",
        help_heading = "Consistency"
    )]
    pub snapshot: SnapshotArg,
    /// Keep the N newest backups of each PVC (prune after each run)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        help_heading = "Retention"
    )]
    pub keep_last: u32,
    /// Keep the newest backup of each of the last N hours (prune after each run)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        help_heading = "Retention"
    )]
    pub keep_hourly: u32,
    /// Keep the newest backup of each of the last N days (prune after each run)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        help_heading = "Retention"
    )]
    pub keep_daily: u32,
    /// Keep the newest backup of each of the last N ISO weeks (prune after each run)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        help_heading = "Retention"
    )]
    pub keep_weekly: u32,
    /// Keep the newest backup of each of the last N months (prune after each run)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        help_heading = "Retention"
    )]
    pub keep_monthly: u32,
    /// Secret in the namespace whose keys become the job's environment (e.g.
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AZURE_STORAGE_CONNECTION_STRING)
    #[arg(long, value_name = "NAME", help_heading = "Credentials")]
    pub credentials_secret: Option<String>,
    /// Annotation for the job's ServiceAccount, for workload identity (repeatable), e.g.
    /// eks.amazonaws.com/role-arn=ARN, azure.workload.identity/client-id=ID,
    /// iam.gke.io/gcp-service-account=EMAIL
    #[arg(long, value_name = "KEY=VALUE", help_heading = "Credentials")]
    pub service_account_annotation: Vec<String>,
    /// The plugin image the job runs (default: this version's)
    #[arg(long, value_name = "IMAGE", help_heading = "Job")]
    pub image: Option<String>,
    /// Helper image of each run (create's --image)
    #[arg(
        long,
        default_value = crate::helper_pod::DEFAULT_IMAGE,
        value_name = "IMAGE",
        help_heading = "Job"
    )]
    pub helper_image: String,
    /// Run the helpers as this UID (create's --run-as-user)
    #[arg(long, value_name = "UID", help_heading = "Job")]
    pub run_as_user: Option<i64>,
    /// Print every object (ServiceAccount, Role, RoleBinding, CronJobs) as YAML (or JSON with
    /// -o json) for GitOps; apply nothing
    #[arg(long, help_heading = "Run")]
    pub dry_run: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// Also list pods without a mesh proxy
    #[arg(long)]
    #[arg(help_heading = "Selection")]
    pub all_pods: bool,
    /// Label selector for pods (e.g. app=orders-db)
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    #[arg(help_heading = "Selection")]
    pub selector: Option<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// PVCs to back up (NAME or NAMESPACE/NAME); default: every PVC a mesh pod mounts
    pub pvcs: Vec<String>,
    /// Destination: a local directory (or file:///path), s3://bucket/prefix,
    /// az://container/prefix or gs://bucket/prefix
    #[arg(long, value_name = "DEST")]
    #[arg(help_heading = "Destination")]
    pub to: String,
    /// Only PVCs mounted by pods of this mesh
    #[arg(long, value_name = "MESH")]
    #[arg(help_heading = "Selection")]
    pub mesh: Option<String>,
    /// Label selector for the pods whose PVCs are backed up
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    #[arg(help_heading = "Selection")]
    pub selector: Option<String>,
    /// Every PVC in scope, mounted or not, mesh or not
    #[arg(long, conflicts_with = "mesh")]
    #[arg(help_heading = "Selection")]
    pub all_pvcs: bool,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub consistency: ConsistencyArgs,
    #[command(flatten)]
    pub helper: HelperArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
    /// Back up this many PVCs at once
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
    #[arg(help_heading = "Run")]
    pub parallel: u16,
    /// At most this many helper pods on any one node at a time
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=32))]
    #[arg(help_heading = "Run")]
    pub max_per_node: u16,
    /// Exec streams per volume, `auto` or 1-16; several fill a distant link that one stream
    /// cannot, into one archive. auto: one inside the cluster or below 64 MiB, else measured:
    /// one if a stream carries 100 MB/s, else enough to make that up and one more (at most one
    /// per 32 MiB, and 4)
    #[arg(long, value_name = "N", default_value = "auto", value_parser = parse_streams)]
    #[arg(help_heading = "Run")]
    pub streams: StreamsArg,
    /// Print the plan and the helper pod spec; create nothing
    #[arg(long)]
    #[arg(help_heading = "Run")]
    pub dry_run: bool,
    #[command(flatten)]
    pub encrypt: EncryptArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Multipart upload part size in MiB (5-512; default 8). Memory is about 6 parts per PVC
    #[arg(long, value_name = "MIB", help_heading = "Object storage")]
    pub part_size: Option<u64>,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Data")]
pub struct DataArgs {
    /// Compression of the stored archive
    #[arg(long, value_enum, default_value = "zstd")]
    pub compression: CompressionArg,
    /// Compression level (gzip 0-9, zstd 1-19; default: the fastest)
    #[arg(long)]
    pub level: Option<i32>,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Consistency")]
pub struct ConsistencyArgs {
    /// Copy from a CSI VolumeSnapshot (or a clone) of the PVC: `auto` when the PVC's driver
    /// has a VolumeSnapshotClass, `always` or fail, `never` (read the live volume)
    #[arg(long, value_enum, default_value = "auto", value_name = "WHEN")]
    pub snapshot: SnapshotArg,
    /// VolumeSnapshotClass to use instead of the driver's default
    #[arg(long, value_name = "CLASS")]
    pub snapshot_class: Option<String>,
    /// How long a snapshot may take to be cut and ready, and its temporary PVC to bind
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub snapshot_timeout: std::time::Duration,
    /// Fail (and write nothing) when a live copy saw files change while it read them
    #[arg(long)]
    pub require_consistent: bool,
    /// Command (sh -c) to run in the workload's container before the copy is cut
    #[arg(long, value_name = "CMD")]
    pub pre_hook: Option<String>,
    /// Command (sh -c) to run in the workload's container once the copy is cut, even on failure
    #[arg(long, value_name = "CMD")]
    pub post_hook: Option<String>,
    /// Container for the hooks (default: the first non-proxy container that mounts the PVC)
    #[arg(long, value_name = "NAME")]
    pub hook_container: Option<String>,
    /// Give up on a hook after this long
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub hook_timeout: std::time::Duration,
    /// What a failing hook does: `fail` stops this PVC's backup, `continue` goes on
    #[arg(long, value_enum, default_value = "fail", value_name = "ACTION")]
    pub hook_on_error: HookOnErrorArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SnapshotArg {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HookOnErrorArg {
    Fail,
    Continue,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Retries")]
pub struct RetryArgs {
    /// Retries per PVC after a transient failure (connection reset, API outage or 5xx/429,
    /// helper pod evicted or killed, stalled stream); 0 turns retries off
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub retries: u32,
    /// Stop retrying once this much time has passed since the PVC's first failure (e.g. 30s, 5m)
    #[arg(long, default_value = crate::retry::DEFAULT_RETRY_TIMEOUT, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub retry_timeout: std::time::Duration,
    /// Declare a data stream dead when no byte moves for this long (e.g. 60s, 2m)
    #[arg(long, default_value = crate::retry::DEFAULT_STALL_TIMEOUT, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub stall_timeout: std::time::Duration,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Helper pod")]
pub struct HelperArgs {
    /// Helper image (any image with busybox-compatible sh, tar, find, stat, xargs, sha256sum, awk)
    #[arg(long, default_value = crate::helper_pod::DEFAULT_IMAGE, value_name = "IMAGE")]
    pub image: String,
    /// Run the helper as this UID instead of root (for PodSecurity `restricted` namespaces)
    #[arg(long, value_name = "UID")]
    pub run_as_user: Option<i64>,
    /// Give up when the helper pod is not running after this many seconds
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub pod_timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    Gzip,
    Zstd,
    None,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A manifest path, an archive path, or BACKUP_ID/NAMESPACE/PVC with --from
    pub backup: String,
    /// Where the backup lives, when BACKUP is an id
    #[arg(long, value_name = "DEST")]
    #[arg(help_heading = "Source")]
    pub from: Option<String>,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The destination to list
    pub dest: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A manifest path, an archive path, or BACKUP_ID/NAMESPACE/PVC with --from
    pub backup: String,
    /// Where the backup lives, when BACKUP is an id
    #[arg(long, value_name = "DEST")]
    #[arg(help_heading = "Source")]
    pub from: Option<String>,
    /// List every entry
    #[arg(long)]
    #[arg(help_heading = "Output")]
    pub files: bool,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestoreModeArg {
    /// Afterwards the volume holds exactly what the backup holds
    Replace,
    /// Overwrite the backup's paths and keep everything else
    Merge,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A manifest path, an archive path, or BACKUP_ID/NAMESPACE/PVC with --from
    pub backup: String,
    /// Where the backup lives, when BACKUP is an id
    #[arg(long, value_name = "DEST")]
    #[arg(help_heading = "Source")]
    pub from: Option<String>,
    /// Target PVC (default: the PVC the backup was taken from)
    #[arg(long, value_name = "NAME")]
    #[arg(help_heading = "Target")]
    pub to_pvc: Option<String>,
    /// Create the target PVC from the manifest's spec
    #[arg(long)]
    #[arg(help_heading = "Target")]
    pub create_pvc: bool,
    /// With --create-pvc: use this StorageClass
    #[arg(long, requires = "create_pvc", value_name = "SC")]
    #[arg(help_heading = "Target")]
    pub storage_class: Option<String>,
    /// With --create-pvc: request this size (e.g. 2Gi)
    #[arg(long, requires = "create_pvc", value_name = "QUANTITY")]
    #[arg(help_heading = "Target")]
    pub size: Option<String>,
    /// How the backup meets what is already on the volume
    #[arg(long, value_enum, default_value = "replace")]
    #[arg(help_heading = "Safety")]
    pub mode: RestoreModeArg,
    /// Do not ask for confirmation
    #[arg(long, short = 'y')]
    #[arg(help_heading = "Safety")]
    pub yes: bool,
    /// Print the plan; change nothing
    #[arg(long)]
    #[arg(help_heading = "Safety")]
    pub dry_run: bool,
    /// Restore even while other pods mount the PVC
    #[arg(long)]
    #[arg(help_heading = "Safety")]
    pub force: bool,
    /// Delete the PVC's content, then extract straight into it; no rollback: a failure leaves
    /// the volume partly restored
    ///
    /// For an existing PVC whose data leaves no room to stage the backup next to it (--mode
    /// replace only). A failure or interruption after the delete leaves the volume partly
    /// restored until the same restore is run again. Asks a second confirmation (--yes skips it)
    #[arg(long)]
    #[arg(help_heading = "Safety")]
    pub in_place: bool,
    #[command(flatten)]
    pub rollback: RollbackArgs,
    #[command(flatten)]
    pub helper: HelperArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `restore --in-place`'s rollback: a VolumeSnapshot of the target, cut before its content is
/// deleted.
#[derive(Debug, Args)]
#[command(next_help_heading = "Safety")]
pub struct RollbackArgs {
    /// With --in-place: first cut a VolumeSnapshot of the target to roll back to: `auto` when
    /// its driver has a VolumeSnapshotClass, `always` or refuse, `never`
    #[arg(
        long = "snapshot",
        value_enum,
        default_value = "auto",
        value_name = "WHEN",
        requires = "in_place"
    )]
    pub snapshot: SnapshotArg,
    /// With --in-place: keep that snapshot after a successful restore; --keep-snapshot=false
    /// deletes it (it is always kept after a failure)
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true", requires = "in_place")]
    pub keep_snapshot: bool,
    /// With --in-place: VolumeSnapshotClass to use instead of the driver's default
    #[arg(long, value_name = "CLASS", requires = "in_place")]
    pub snapshot_class: Option<String>,
    /// With --in-place: how long the snapshot may take to be cut and ready
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = humantime::parse_duration, requires = "in_place")]
    pub snapshot_timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Do not ask for confirmation
    #[arg(long, short = 'y')]
    #[arg(help_heading = "Safety")]
    pub yes: bool,
    /// Clean up this backup destination instead of the cluster (a directory, s3://, az://,
    /// gs://)
    #[arg(long, value_name = "DEST")]
    #[arg(help_heading = "Destination")]
    pub to: Option<String>,
    /// With --to: remove only leftovers untouched for this long (e.g. 12h, 7d); the default
    /// outlasts any running backup, whose files must stay
    #[arg(long, requires = "to", value_name = "DURATION", value_parser = humantime::parse_duration, default_value = crate::destination::cleanup::DEFAULT_OLDER_THAN)]
    #[arg(help_heading = "Destination")]
    pub older_than: std::time::Duration,
    /// With --to: list what would be removed; remove nothing
    #[arg(long, requires = "to")]
    #[arg(help_heading = "Safety")]
    pub dry_run: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The destination to prune (a directory, s3://, az://, gs://)
    pub dest: String,
    /// Keep the N newest backups of each PVC
    #[arg(long, value_name = "N", default_value_t = 0)]
    #[arg(help_heading = "Policy")]
    pub keep_last: u32,
    /// Keep the newest backup of each of the last N hours that hold one
    #[arg(long, value_name = "N", default_value_t = 0)]
    #[arg(help_heading = "Policy")]
    pub keep_hourly: u32,
    /// Keep the newest backup of each of the last N days (UTC) that hold one
    #[arg(long, value_name = "N", default_value_t = 0)]
    #[arg(help_heading = "Policy")]
    pub keep_daily: u32,
    /// Keep the newest backup of each of the last N ISO weeks that hold one
    #[arg(long, value_name = "N", default_value_t = 0)]
    #[arg(help_heading = "Policy")]
    pub keep_weekly: u32,
    /// Keep the newest backup of each of the last N months (UTC) that hold one
    #[arg(long, value_name = "N", default_value_t = 0)]
    #[arg(help_heading = "Policy")]
    pub keep_monthly: u32,
    /// Remove leftovers of interrupted backups only once untouched for this long (e.g. 12h,
    /// 7d); the default outlasts any running backup, whose files must stay
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = crate::destination::cleanup::DEFAULT_OLDER_THAN)]
    #[arg(help_heading = "Policy")]
    pub older_than: std::time::Duration,
    /// Show what would be kept and removed; remove nothing
    #[arg(long)]
    #[arg(help_heading = "Safety")]
    pub dry_run: bool,
    /// Do not ask for confirmation
    #[arg(long, short = 'y')]
    #[arg(help_heading = "Safety")]
    pub yes: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
    Powershell,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to print the script for
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

/// The request kubectl's plugin completion makes (kubectl >= 1.26, through
/// completions/kubectl_complete-pvbackup): `kubectl-pvbackup __complete WORDS…`, or the binary
/// itself called as `kubectl_complete-pvbackup WORDS…` (a copy or link; on Windows the only
/// way). Recognised before clap parses: the words, flags included, must reach the completer
/// untouched, and a hidden subcommand would still show in the generated completion scripts.
/// Returns the words after `kubectl pvbackup`; the last is being completed (may be empty).
pub fn completion_request(args: &[std::ffi::OsString]) -> Option<Vec<String>> {
    let program = std::path::Path::new(args.first()?);
    let words = if program
        .file_stem()
        .is_some_and(|s| s == "kubectl_complete-pvbackup")
    {
        &args[1..]
    } else if args.get(1).is_some_and(|a| a == "__complete") {
        &args[2..]
    } else {
        return None;
    };
    Some(
        words
            .iter()
            .map(|w| w.to_string_lossy().into_owned())
            .collect(),
    )
}

// Examples in kubectl's style: a `#` line saying what, then the command.
const DISCOVER_EXAMPLES: &str = "\
Examples:
  # Mesh workloads and their volumes in every namespace
  kubectl pvbackup discover -A

  # The same for one namespace, as JSON for scripts
  kubectl pvbackup discover -n shop -o json

  # Every pod with a volume, meshed or not, selected by label
  kubectl pvbackup discover -A --all-pods -l app=orders-db";

const CREATE_EXAMPLES: &str = "\
Examples:
  # Back up every PVC that a meshed pod in namespace shop mounts
  kubectl pvbackup create -n shop --to ./backups

  # Back up one PVC with gzip instead of zstd
  kubectl pvbackup create data-orders-db-0 -n shop --to ./backups --compression gzip

  # Back up Linkerd workloads' PVCs in every namespace; report as JSON
  kubectl pvbackup create -A --mesh linkerd --to /mnt/backups -o json

  # Show the plan and the helper pod spec without creating anything
  kubectl pvbackup create -n shop --to ./backups --dry-run";

const VERIFY_EXAMPLES: &str = "\
Examples:
  # Check an archive against its manifest
  kubectl pvbackup verify ./backups/<id>/shop/data-orders-db-0.manifest.json

  # The same, naming the backup by id; exit code 3 means the backup is damaged
  kubectl pvbackup verify <id>/shop/data-orders-db-0 --from ./backups -o json";

const LIST_EXAMPLES: &str = "\
Examples:
  # Backups under a directory; incomplete ones are marked INCOMPLETE
  kubectl pvbackup list ./backups

  # Only the ids of restorable backups
  kubectl pvbackup list ./backups -o json | jq -r '.items[] | select(.restorable) | .id'";

const INSPECT_EXAMPLES: &str = "\
Examples:
  # A backup's summary and every file it holds
  kubectl pvbackup inspect ./backups/<id>/shop/data-orders-db-0.manifest.json --files

  # The manifest as YAML, naming the backup by id
  kubectl pvbackup inspect <id>/shop/data-orders-db-0 --from ./backups -o yaml";

const RESTORE_EXAMPLES: &str = "\
Examples:
  # Restore into the PVC the backup came from, without a prompt
  kubectl pvbackup restore ./backups/<id>/shop/data-orders-db-0.manifest.json --yes

  # Restore a copy into a new PVC in another namespace
  kubectl pvbackup restore <id>/shop/data-orders-db-0 --from ./backups \\
    -n shop-copy --create-pvc --yes

  # Show what would happen; change nothing
  kubectl pvbackup restore ./backups/<id>/shop/data-orders-db-0.manifest.json --dry-run

  # A full volume without room to stage: delete, then extract in place (no rollback)
  kubectl pvbackup restore ./backups/<id>/shop/data-orders-db-0.manifest.json --in-place";

const CLEANUP_EXAMPLES: &str = "\
Examples:
  # Delete leftover helper pods in the current namespace and roll back what an
  # interrupted restore left on its volume (asks first)
  kubectl pvbackup cleanup

  # Delete them in every namespace, without a prompt
  kubectl pvbackup cleanup -A --yes

  # What killed backups left in a directory more than a day ago (removes nothing)
  kubectl pvbackup cleanup --to ./backups --dry-run

  # Remove it, and abort a bucket's multipart uploads started more than 12 hours ago
  kubectl pvbackup cleanup --to s3://acme-backups/prod --older-than 12h --yes";

const PRUNE_EXAMPLES: &str = "\
Examples:
  # What a policy would keep and remove, and why (removes nothing)
  kubectl pvbackup prune ./backups --keep-last 2 --keep-daily 7 --dry-run

  # Apply it to a bucket without a prompt, as a script would
  kubectl pvbackup prune s3://acme-backups/prod --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --yes

  # The decisions as JSON
  kubectl pvbackup prune ./backups --keep-last 5 --dry-run -o json";

const VERSION_EXAMPLES: &str = "\
Examples:
  # Version, git commit and build target
  kubectl pvbackup version

  # The same as JSON
  kubectl pvbackup version -o json";

const COMPLETION_EXAMPLES: &str = "\
The scripts printed here complete the binary called as `kubectl-pvbackup`. Completing
`kubectl pvbackup ...` (kubectl 1.26 or newer) needs none of them: put
completions/kubectl_complete-pvbackup (in the release archive) on PATH next to kubectl-pvbackup
and enable kubectl's own completion (`source <(kubectl completion bash)`, ...).

Examples:
  # bash: load now, and in every new shell
  source <(kubectl pvbackup completion bash)
  kubectl pvbackup completion bash \\
    > ~/.local/share/bash-completion/completions/kubectl-pvbackup

  # zsh: a directory on $fpath
  kubectl pvbackup completion zsh > \"${fpath[1]}/_kubectl-pvbackup\"

  # fish
  kubectl pvbackup completion fish > ~/.config/fish/completions/kubectl-pvbackup.fish

  # PowerShell
  kubectl pvbackup completion powershell | Out-String | Invoke-Expression";

const DRILL_EXAMPLES: &str = "\
Examples:
  # Test-restore a backup into a scratch PVC and verify it; exit 0 intact, 3 damaged
  kubectl pvbackup drill ./backups/<id>/shop/data-orders-db-0.manifest.json

  # Weekly drill from a runbook, with a JSON report
  kubectl pvbackup drill <id>/shop/data-orders-db-0 --from /mnt/backups -n drills -o json

  # The newest complete backup of a PVC, whatever its id
  kubectl pvbackup drill --latest shop/data-orders-db-0 --from s3://acme-backups/prod

  # Drill on another storage class, with a larger scratch volume
  kubectl pvbackup drill ./backups/<id>/shop/media.manifest.json --storage-class fast --size 2Gi";

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// A manifest path, an archive path, or BACKUP_ID/NAMESPACE/PVC with --from; with
    /// --latest, NAMESPACE/PVC
    pub backup: String,
    /// Where the backup lives, when BACKUP is an id
    #[arg(long, value_name = "DEST")]
    #[arg(help_heading = "Source")]
    pub from: Option<String>,
    /// Drill the newest complete backup of NAMESPACE/PVC at --from (what a schedule's drill runs)
    #[arg(long, requires = "from")]
    #[arg(help_heading = "Source")]
    pub latest: bool,
    /// StorageClass of the scratch PVC (default: the backed-up PVC's)
    #[arg(long, value_name = "SC")]
    #[arg(help_heading = "Scratch PVC")]
    pub storage_class: Option<String>,
    /// Size of the scratch PVC, e.g. 2Gi (default: the backed-up PVC's)
    #[arg(long, value_name = "QUANTITY")]
    #[arg(help_heading = "Scratch PVC")]
    pub size: Option<String>,
    #[command(flatten)]
    pub helper: HelperArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

const SCHEDULE_EXAMPLES: &str = "\
Examples:
  # Back up namespace shop's mesh PVCs to S3 at 03:00 Berlin time; keep 7 dailies
  kubectl create secret generic s3-creds -n shop \\
    --from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=...
  kubectl pvbackup schedule create nightly -n shop --cron '0 3 * * *' \\
    --time-zone Europe/Berlin --to s3://backups/shop --credentials-secret s3-creds --keep-daily 7

  # The same objects as YAML, for GitOps
  kubectl pvbackup schedule create nightly -n shop --cron '0 3 * * *' \\
    --to s3://backups/shop --credentials-secret s3-creds --dry-run -o yaml

  # Also drill the newest backup of each PVC on Sundays at 04:00
  kubectl pvbackup schedule create nightly data-orders-db-0 -n shop --cron '0 3 * * *' \\
    --to s3://backups/shop --credentials-secret s3-creds --drill-cron '0 4 * * 0'

  # Run it now and wait for the result; the same for its drill; list; remove it and all it made
  kubectl pvbackup schedule run-now nightly -n shop --wait
  kubectl pvbackup schedule run-now nightly -n shop --drill --wait
  kubectl pvbackup schedule list -A
  kubectl pvbackup schedule delete nightly -n shop";

/// Decryption of encrypted backups (README: Encryption); keys stay on this machine.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Encryption")]
pub struct KeyArgs {
    /// Private key to decrypt an encrypted backup with: an age identity file (`age-keygen -o
    /// FILE`) or an unencrypted OpenSSH private key. Repeatable
    #[arg(long, value_name = "FILE", env = "PVBACKUP_IDENTITY_FILE")]
    pub identity: Vec<std::path::PathBuf>,
}

/// Client-side encryption of a new backup (README: Encryption).
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Encryption")]
pub struct EncryptArgs {
    /// Encrypt the backup with age to this recipient: an X25519 key `age1…` or an SSH public
    /// key (`ssh-ed25519 …`, `ssh-rsa …`). Repeatable
    #[arg(long, value_name = "RECIPIENT")]
    pub encrypt_to: Vec<String>,
    /// Encrypt to every recipient in FILE (one per line, `#` comments; age's `-R` format).
    /// Repeatable
    #[arg(long, value_name = "FILE")]
    pub encrypt_to_file: Vec<std::path::PathBuf>,
}

/// Settings of s3://, az:// and gs:// destinations; credentials come from the environment
/// (README: Object storage), never from flags.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Object storage")]
pub struct StoreArgs {
    /// Endpoint of an S3-compatible store (MinIO, Ceph RGW), Azurite or a GCS emulator
    /// (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL for s3://)
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
}

/// `--streams`: `auto` or a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamsArg {
    Auto,
    Count(u16),
}

fn parse_streams(s: &str) -> Result<StreamsArg, String> {
    if s == "auto" {
        return Ok(StreamsArg::Auto);
    }
    match s.parse::<u16>() {
        Ok(n @ 1..=16) => Ok(StreamsArg::Count(n)),
        _ => Err(format!(
            "{s:?} is not a stream count; use auto or a number from 1 to 16"
        )),
    }
}

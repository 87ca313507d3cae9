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

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-pvbackup",
    bin_name = "kubectl pvbackup",
    version,
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
    #[command(
        after_help = "Examples:\n  kubectl pvbackup discover -A\n  kubectl pvbackup discover -n shop -o json\n  kubectl pvbackup discover -A --all-pods -l app=orders-db"
    )]
    Discover(DiscoverArgs),
    /// Back up PVCs to a destination through a short-lived helper pod
    #[command(
        after_help = "Examples:\n  kubectl pvbackup create -n shop --to ./backups\n  kubectl pvbackup create data-orders-db-0 -n shop --to ./backups --compression zstd\n  kubectl pvbackup create -A --mesh linkerd --to /mnt/backups -o json"
    )]
    Create(CreateArgs),
    /// Check an archive against its manifest (offline, no cluster needed)
    #[command(
        after_help = "Examples:\n  kubectl pvbackup verify ./backups/<id>/shop/data-orders-db-0.manifest.json\n  kubectl pvbackup verify <id>/shop/data-orders-db-0 --from ./backups -o json"
    )]
    Verify(VerifyArgs),
    /// List the backups at a destination
    #[command(
        after_help = "Examples:\n  kubectl pvbackup list ./backups\n  kubectl pvbackup list ./backups -o json"
    )]
    List(ListArgs),
    /// Show a backup's manifest
    #[command(
        after_help = "Examples:\n  kubectl pvbackup inspect ./backups/<id>/shop/data-orders-db-0.manifest.json --files"
    )]
    Inspect(InspectArgs),
    /// Restore a backup into a PVC, all-or-nothing
    #[command(
        after_help = "Examples:\n  kubectl pvbackup restore ./backups/<id>/shop/data-orders-db-0.manifest.json --yes\n  kubectl pvbackup restore <id>/shop/data-orders-db-0 --from ./backups -n shop-copy --create-pvc --yes\n  kubectl pvbackup restore ./b/<id>/shop/data-orders-db-0.manifest.json --dry-run"
    )]
    Restore(RestoreArgs),
    /// Delete helper pods left behind by an interrupted run
    Cleanup(CleanupArgs),
    /// Print version, git commit and build target
    Version,
}

#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// Also list pods without a mesh proxy
    #[arg(long)]
    pub all_pods: bool,
    /// Label selector for pods (e.g. app=orders-db)
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// PVCs to back up (NAME or NAMESPACE/NAME); default: every PVC a mesh pod mounts
    pub pvcs: Vec<String>,
    /// Destination: a local directory (or file:///path), s3://bucket/prefix,
    /// az://container/prefix or gs://bucket/prefix
    #[arg(long, value_name = "DEST")]
    pub to: String,
    /// Only PVCs mounted by pods of this mesh
    #[arg(long, value_name = "MESH")]
    pub mesh: Option<String>,
    /// Label selector for the pods whose PVCs are backed up
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Every PVC in scope, mounted or not, mesh or not
    #[arg(long, conflicts_with = "mesh")]
    pub all_pvcs: bool,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub helper: HelperArgs,
    /// Back up this many PVCs at once
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub parallel: u16,
    /// Print the plan and the helper pod spec; create nothing
    #[arg(long)]
    pub dry_run: bool,
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
    /// Retries per PVC after a transient failure (connection reset, outage, helper crash)
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Helper pod")]
pub struct HelperArgs {
    /// Helper image (any image with busybox-compatible sh, tar, sha256sum)
    #[arg(long, default_value = "busybox:1.36", value_name = "IMAGE")]
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
    pub from: Option<String>,
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
    #[arg(long, value_name = "DEST")]
    pub from: Option<String>,
    /// List every entry
    #[arg(long)]
    pub files: bool,
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
    #[arg(long, value_name = "DEST")]
    pub from: Option<String>,
    /// Target PVC (default: the PVC the backup was taken from)
    #[arg(long, value_name = "NAME")]
    pub to_pvc: Option<String>,
    /// Create the target PVC from the manifest's spec
    #[arg(long)]
    pub create_pvc: bool,
    /// With --create-pvc: use this StorageClass
    #[arg(long, requires = "create_pvc", value_name = "SC")]
    pub storage_class: Option<String>,
    /// With --create-pvc: request this size (e.g. 2Gi)
    #[arg(long, requires = "create_pvc", value_name = "QUANTITY")]
    pub size: Option<String>,
    #[arg(long, value_enum, default_value = "replace")]
    pub mode: RestoreModeArg,
    /// Do not ask for confirmation
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the plan; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Restore even while other pods mount the PVC
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub helper: HelperArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Do not ask for confirmation
    #[arg(long, short = 'y')]
    pub yes: bool,
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

//! From parsed arguments to a command: validate flags into plans, connect only when the
//! command needs a cluster, dispatch.

use std::sync::Arc;
use std::time::Duration;

use crate::archive::Compression;
use crate::cli::{Cli, Command, CompressionArg, StoreArgs};
use crate::cmd;
use crate::connect::{connect, ConnectOptions, Connection};
use crate::destination;
use crate::discover::TargetSelection;
use crate::exit::Failure;

fn compression(arg: CompressionArg, level: Option<i32>) -> Result<Compression, Failure> {
    Ok(match (arg, level) {
        (CompressionArg::None, Some(_)) => {
            return Err(Failure::usage(
                "--level makes no sense with --compression none",
            ))
        }
        (CompressionArg::None, None) => Compression::None,
        (CompressionArg::Gzip, l) => {
            let l = l.unwrap_or(1);
            if !(0..=9).contains(&l) {
                return Err(Failure::usage(format!(
                    "--level {l} is out of range for gzip (0-9)"
                )));
            }
            Compression::Gzip { level: l as u32 }
        }
        (CompressionArg::Zstd, l) => {
            let l = l.unwrap_or(1);
            if !(1..=19).contains(&l) {
                return Err(Failure::usage(format!(
                    "--level {l} is out of range for zstd (1-19)"
                )));
            }
            Compression::Zstd { level: l }
        }
    })
}

fn retry_policy(a: &crate::cli::RetryArgs) -> Result<crate::retry::RetryPolicy, Failure> {
    crate::retry::RetryPolicy::new(a.retries, a.retry_timeout, a.stall_timeout)
}

fn store(args: &StoreArgs, part_size_mib: Option<u64>) -> destination::StoreOptions {
    destination::StoreOptions {
        endpoint: args.endpoint.clone(),
        part_size: part_size_mib.map(|m| m.saturating_mul(1 << 20)),
    }
}

async fn connection(cli: &Cli) -> Result<Connection, Failure> {
    connect(&ConnectOptions {
        kubeconfig: cli.global.kubeconfig.as_deref(),
        context: cli.global.context.as_deref(),
        namespace: cli.global.namespace.as_deref(),
        all_namespaces: cli.global.all_namespaces,
    })
    .await
}

pub async fn run(cli: Cli) -> Result<(), Failure> {
    let out = cli.global.output;
    match &cli.command {
        Command::Version => cmd::version::run(out),
        Command::Completion(a) => cmd::completion::run(a.shell),
        Command::Verify(a) => cmd::verify::run(
            &a.backup,
            a.from.as_deref(),
            &store(&a.store, None),
            keys(&a.keys)?.as_ref(),
            out,
        ),
        Command::List(a) => cmd::list::run(&a.dest, &store(&a.store, None), out),
        Command::Inspect(a) => cmd::inspect::run(
            &a.backup,
            a.from.as_deref(),
            &store(&a.store, None),
            a.files,
            keys(&a.keys)?.as_ref(),
            out,
        ),
        Command::Discover(a) => {
            let plan = cmd::discover::DiscoverPlan {
                all_pods: a.all_pods,
                selector: a.selector.clone(),
                output: out,
            };
            let conn = connection(&cli).await?;
            cmd::discover::run(&conn, &plan).await
        }
        Command::Cleanup(a) => {
            if let Some(to) = &a.to {
                if cli.global.all_namespaces {
                    return Err(Failure::usage(
                        "-A/--all-namespaces is for helper pods (cleanup without --to); a destination has no namespaces, drop -A",
                    ));
                }
                return cmd::cleanup::run_destination(&cmd::cleanup::DestinationPlan {
                    dest: to.clone(),
                    store: store(&a.store, None),
                    older_than: a.older_than,
                    dry_run: a.dry_run,
                    yes: a.yes,
                    output: out,
                });
            }
            let conn = connection(&cli).await?;
            cmd::cleanup::run(&conn, a.yes, out).await
        }
        Command::Prune(a) => {
            if cli.global.all_namespaces {
                return Err(Failure::usage(
                    "-A/--all-namespaces makes no sense for prune: it always covers every namespace at DEST; drop -A",
                ));
            }
            cmd::prune::run(&cmd::prune::PrunePlan {
                dest: a.dest.clone(),
                store: store(&a.store, None),
                policy: crate::retention::Policy {
                    last: a.keep_last,
                    hourly: a.keep_hourly,
                    daily: a.keep_daily,
                    weekly: a.keep_weekly,
                    monthly: a.keep_monthly,
                },
                older_than: a.older_than,
                dry_run: a.dry_run,
                yes: a.yes,
                output: out,
            })
        }
        Command::Create(a) => {
            let mesh = a.mesh.as_deref().map(cmd::create::parse_mesh).transpose()?;
            let plan = cmd::create::CreatePlan {
                selection: TargetSelection {
                    pvc_names: a.pvcs.clone(),
                    mesh,
                    all_pvcs: a.all_pvcs,
                },
                selector: a.selector.clone(),
                destination: Arc::from(destination::parse_with(
                    &a.to,
                    &store(&a.store, a.part_size),
                )?),
                compression: compression(a.data.compression, a.data.level)?,
                encryption: crate::encryption::Recipients::parse(
                    &a.encrypt.encrypt_to,
                    &a.encrypt.encrypt_to_file,
                )?,
                image: a.helper.image.clone(),
                run_as_user: a.helper.run_as_user,
                pod_timeout: Duration::from_secs(a.helper.pod_timeout),
                retry: retry_policy(&a.retry)?,
                consistency: consistency(&a.consistency),
                parallel: a.parallel as usize,
                dry_run: a.dry_run,
                output: out,
                progress: !cli.global.no_progress,
            };
            let conn = connection(&cli).await?;
            cmd::create::run(&conn, plan).await
        }
        Command::Restore(a) => {
            let plan = cmd::restore::RestorePlan {
                backup: a.backup.clone(),
                from: a.from.clone(),
                to_pvc: a.to_pvc.clone(),
                namespace: cli.global.namespace.clone(),
                create_pvc: a.create_pvc,
                storage_class: a.storage_class.clone(),
                size: a.size.clone(),
                mode: a.mode,
                yes: a.yes,
                dry_run: a.dry_run,
                force: a.force,
                in_place: cmd::restore::check_in_place(a.in_place, a.create_pvc, a.mode)?,
                rollback: rollback(&a.rollback),
                image: a.helper.image.clone(),
                run_as_user: a.helper.run_as_user,
                pod_timeout: Duration::from_secs(a.helper.pod_timeout),
                retry: retry_policy(&a.retry)?,
                output: out,
                store: store(&a.store, None),
                keys: keys(&a.keys)?,
            };
            let conn = connection(&cli).await?;
            cmd::restore::run(&conn, plan).await
        }
        Command::Drill(a) => {
            let plan = cmd::drill::DrillPlan {
                backup: a.backup.clone(),
                from: a.from.clone(),
                namespace: cli.global.namespace.clone(),
                storage_class: a.storage_class.clone(),
                size: a.size.clone(),
                image: a.helper.image.clone(),
                run_as_user: a.helper.run_as_user,
                pod_timeout: Duration::from_secs(a.helper.pod_timeout),
                retry: retry_policy(&a.retry)?,
                output: out,
                store: store(&a.store, None),
                keys: keys(&a.keys)?,
            };
            let conn = connection(&cli).await?;
            cmd::drill::run(&conn, plan).await
        }
    }
}

fn snapshot_mode(a: crate::cli::SnapshotArg) -> crate::snapshot::SnapshotMode {
    use crate::cli::SnapshotArg;
    match a {
        SnapshotArg::Auto => crate::snapshot::SnapshotMode::Auto,
        SnapshotArg::Always => crate::snapshot::SnapshotMode::Always,
        SnapshotArg::Never => crate::snapshot::SnapshotMode::Never,
    }
}

/// `restore`'s `--snapshot`, `--keep-snapshot`, `--snapshot-class`, `--snapshot-timeout`.
fn rollback(a: &crate::cli::RollbackArgs) -> crate::snapshot::RollbackSettings {
    crate::snapshot::RollbackSettings {
        mode: snapshot_mode(a.snapshot),
        class: a.snapshot_class.clone(),
        timeout: a.snapshot_timeout,
        keep: a.keep_snapshot,
    }
}

/// `--identity` (or `$PVBACKUP_IDENTITY_FILE`), loaded before anything else happens.
fn keys(a: &crate::cli::KeyArgs) -> Result<Option<crate::encryption::Identities>, Failure> {
    Ok(crate::encryption::Identities::load(&a.identity)?)
}

/// `--snapshot`, `--require-consistent` and the hook flags as plain settings.
fn consistency(a: &crate::cli::ConsistencyArgs) -> crate::snapshot::ConsistencySettings {
    use crate::cli::HookOnErrorArg;
    use crate::hooks::{HookPlan, HookSpec, OnError};
    let on_error = match a.hook_on_error {
        HookOnErrorArg::Fail => OnError::Fail,
        HookOnErrorArg::Continue => OnError::Continue,
    };
    let spec = |cmd: &Option<String>| {
        cmd.as_ref().map(|c| HookSpec {
            command: c.clone(),
            container: a.hook_container.clone(),
            timeout: a.hook_timeout,
            on_error,
        })
    };
    crate::snapshot::ConsistencySettings {
        mode: snapshot_mode(a.snapshot),
        class: a.snapshot_class.clone(),
        require_consistent: a.require_consistent,
        timeout: a.snapshot_timeout,
        hooks: HookPlan {
            pre: spec(&a.pre_hook),
            post: spec(&a.post_hook),
        },
        denied: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_levels_are_checked() {
        assert!(
            matches!(compression(CompressionArg::Gzip, Some(12)), Err(f) if f.kind == crate::exit::ExitKind::Usage)
        );
        assert!(compression(CompressionArg::Zstd, None).is_ok());
        assert!(compression(CompressionArg::None, Some(3)).is_err());
    }
}

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
                max_per_node: a.max_per_node as usize,
                streams: match a.streams {
                    crate::cli::StreamsArg::Auto => crate::streams::StreamCount::Auto,
                    crate::cli::StreamsArg::Count(n) => {
                        crate::streams::StreamCount::Fixed(n as usize)
                    }
                },
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
            let store = store(&a.store, None);
            let backup = match (&a.from, a.latest) {
                (Some(from), true) => crate::locate::latest(&a.backup, from, &store)?,
                _ => a.backup.clone(),
            };
            let plan = cmd::drill::DrillPlan {
                backup,
                from: a.from.clone(),
                namespace: cli.global.namespace.clone(),
                storage_class: a.storage_class.clone(),
                size: a.size.clone(),
                image: a.helper.image.clone(),
                run_as_user: a.helper.run_as_user,
                pod_timeout: Duration::from_secs(a.helper.pod_timeout),
                retry: retry_policy(&a.retry)?,
                output: out,
                store,
                keys: keys(&a.keys)?,
            };
            let conn = connection(&cli).await?;
            cmd::drill::run(&conn, plan).await
        }
        Command::Schedule(c) => schedule(&cli, c).await,
    }
}

async fn schedule(cli: &Cli, c: &crate::cli::ScheduleCommand) -> Result<(), Failure> {
    use crate::cli::ScheduleCommand;
    let out = cli.global.output;
    let namespaced = |what: &str| {
        if cli.global.all_namespaces {
            Err(Failure::usage(format!(
                "-A/--all-namespaces makes no sense for schedule {what}: a schedule lives in one namespace; use -n NS"
            )))
        } else {
            Ok(())
        }
    };
    match c {
        ScheduleCommand::Create(a) => {
            namespaced("create")?;
            // With -n, the flags are checked and --dry-run renders without any cluster (GitOps
            // pipelines have none); without it, the context's namespace is the schedule's.
            let mut conn = None;
            let namespace = match &cli.global.namespace {
                Some(ns) => ns.clone(),
                None => {
                    let c = connection(cli).await?;
                    let ns = c.namespace.clone();
                    conn = Some(c);
                    ns
                }
            };
            let plan = schedule_plan(a, namespace)?;
            if a.dry_run {
                return cmd::schedule::print_objects(&plan, out);
            }
            let conn = match conn {
                Some(c) => c,
                None => connection(cli).await?,
            };
            cmd::schedule::create(&conn, &plan, out).await
        }
        ScheduleCommand::List => {
            let conn = connection(cli).await?;
            cmd::schedule::list(&conn, out).await
        }
        ScheduleCommand::Delete(a) => {
            namespaced("delete")?;
            let conn = connection(cli).await?;
            cmd::schedule::delete(&conn, &a.name).await
        }
        ScheduleCommand::RunNow(a) => {
            namespaced("run-now")?;
            let conn = connection(cli).await?;
            cmd::schedule::run_now(&conn, &a.name, a.drill, a.wait.then_some(a.timeout)).await
        }
    }
}

fn value_name<T: clap::ValueEnum>(v: T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// `schedule create`'s flags into a plan: every value checked here, and the job's `create` and
/// `prune` command lines built from them (each parses as the plugin's own CLI: unit-tested).
pub fn schedule_plan(
    a: &crate::cli::ScheduleCreateArgs,
    namespace: String,
) -> Result<crate::schedule::SchedulePlan, Failure> {
    use crate::schedule as s;
    let usage = |e: s::ScheduleError| Failure::usage(e.to_string());
    s::check_name(&a.name).map_err(usage)?;
    s::check_cron(&a.cron).map_err(usage)?;
    if let Some(cron) = &a.drill_cron {
        s::check_drill_name(&a.name).map_err(usage)?;
        s::check_cron(cron)
            .map_err(|e| Failure::usage(e.to_string().replacen("--cron", "--drill-cron", 1)))?;
        if a.pvcs.is_empty() {
            return Err(usage(s::ScheduleError::DrillNeedsPvcs));
        }
    }
    if let Some(tz) = &a.time_zone {
        s::check_time_zone(tz).map_err(usage)?;
    }
    let annotations = s::parse_annotations(&a.service_account_annotation).map_err(usage)?;
    match destination::object::url::parse(&a.to) {
        Some(Ok(_)) => {}
        Some(Err(e)) => {
            return Err(Failure::usage(format!("--to {}: {e}", a.to)));
        }
        None => {
            return Err(Failure::usage(format!(
                "--to {} is not a bucket: a schedule runs in a pod, whose local directories vanish with it. Use s3://, az:// or gs://",
                a.to
            )))
        }
    }
    if let Some(m) = &a.mesh {
        cmd::create::parse_mesh(m)?;
    }
    compression(a.data.compression, a.data.level)?;
    // Recipients are public keys: the job's `create` gets them as `--encrypt-to`, read here
    // from any recipients file (which stays on this machine).
    let recipients =
        crate::encryption::Recipients::parse(&a.encrypt.encrypt_to, &a.encrypt.encrypt_to_file)?;
    if recipients.is_some() && a.drill_cron.is_some() {
        return Err(Failure::usage(
            "--drill-cron cannot drill encrypted backups: a drill decrypts on the machine that runs it, so the job would need the private key inside the cluster, where keys never go. Drop --drill-cron and drill from a machine holding the key: kubectl pvbackup drill --latest NS/PVC --from DEST --identity FILE",
        ));
    }
    let mut create = Vec::new();
    for p in &a.pvcs {
        match p.split_once('/') {
            Some((ns, name)) if ns == namespace => create.push(name.to_string()),
            Some((ns, _)) => {
                return Err(Failure::usage(format!(
                    "PVC {p} is in namespace {ns}, but the schedule is in {namespace}: a schedule backs up its own namespace; make one schedule per namespace (-n {ns})"
                )))
            }
            None => create.push(p.clone()),
        }
    }
    let push = |v: &mut Vec<String>, flag: &str, value: &str| {
        v.push(flag.to_string());
        v.push(value.to_string());
    };
    push(&mut create, "-n", &namespace);
    push(&mut create, "--to", &a.to);
    if let Some(m) = &a.mesh {
        push(&mut create, "--mesh", m);
    }
    if let Some(l) = &a.selector {
        push(&mut create, "-l", l);
    }
    if a.all_pvcs {
        create.push("--all-pvcs".into());
    }
    push(
        &mut create,
        "--compression",
        &value_name(a.data.compression),
    );
    if let Some(l) = a.data.level {
        push(&mut create, "--level", &l.to_string());
    }
    push(&mut create, "--snapshot", &value_name(a.snapshot));
    push(&mut create, "--image", &a.helper_image);
    if let Some(u) = a.run_as_user {
        push(&mut create, "--run-as-user", &u.to_string());
    }
    for key in recipients.iter().flat_map(|r| r.keys()) {
        push(&mut create, "--encrypt-to", key);
    }
    let mut store = Vec::new();
    if let Some(e) = &a.store.endpoint {
        push(&mut store, "--endpoint", e);
    }
    create.extend(store.iter().cloned());
    // The PVC names were checked above (all in the schedule's namespace).
    let drill = a.drill_cron.as_ref().map(|cron| s::DrillSchedule {
        cron: cron.clone(),
        runs: a
            .pvcs
            .iter()
            .map(|p| {
                let pvc = p.rsplit('/').next().unwrap_or(p);
                let mut d = vec!["--latest".to_string(), format!("{namespace}/{pvc}")];
                push(&mut d, "--from", &a.to);
                push(&mut d, "-n", &namespace);
                push(&mut d, "--image", &a.helper_image);
                if let Some(u) = a.run_as_user {
                    push(&mut d, "--run-as-user", &u.to_string());
                }
                d.extend(store.iter().cloned());
                d
            })
            .collect(),
    });
    let keep = [
        ("--keep-last", a.keep_last),
        ("--keep-hourly", a.keep_hourly),
        ("--keep-daily", a.keep_daily),
        ("--keep-weekly", a.keep_weekly),
        ("--keep-monthly", a.keep_monthly),
    ];
    let prune = keep.iter().any(|(_, n)| *n > 0).then(|| {
        let mut p = vec![a.to.clone()];
        for (flag, n) in keep.iter().filter(|(_, n)| *n > 0) {
            push(&mut p, flag, &n.to_string());
        }
        p.push("--yes".into());
        p.extend(store.iter().cloned());
        p
    });
    Ok(s::SchedulePlan {
        name: a.name.clone(),
        namespace,
        cron: a.cron.clone(),
        time_zone: a.time_zone.clone(),
        image: a.image.clone().unwrap_or_else(s::default_image),
        concurrency: match a.concurrency_policy {
            crate::cli::ConcurrencyArg::Allow => s::ConcurrencyPolicy::Allow,
            crate::cli::ConcurrencyArg::Forbid => s::ConcurrencyPolicy::Forbid,
            crate::cli::ConcurrencyArg::Replace => s::ConcurrencyPolicy::Replace,
        },
        job_timeout_seconds: a.job_timeout.as_secs().max(1) as i64,
        create_args: create,
        prune_args: prune,
        drill,
        destination: a.to.clone(),
        credentials_secret: a.credentials_secret.clone(),
        service_account_annotations: annotations,
    })
}

#[cfg(test)]
mod schedule_tests {
    use clap::Parser;

    use crate::cli::{Cli, Command, ScheduleCommand};

    fn plan(args: &[&str]) -> Result<crate::schedule::SchedulePlan, crate::exit::Failure> {
        let mut argv = vec!["kubectl-pvbackup", "schedule", "create"];
        argv.extend(args);
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Schedule(ScheduleCommand::Create(a)) = &cli.command else {
            panic!("not schedule create");
        };
        super::schedule_plan(a, "shop".into())
    }

    /// An encrypted schedule hands its recipients (public keys, also from a recipients file) to
    /// the job's `create`, and refuses a drill, which would need the private key in the cluster.
    #[test]
    fn an_encrypted_schedule_passes_recipients_and_refuses_a_drill() {
        let dir = tempfile::tempdir().unwrap();
        let x25519 = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        let file = dir.path().join("recipients.txt");
        std::fs::write(&file, format!("# ops team\n{x25519}\n")).unwrap();
        let file = file.to_str().unwrap();
        let base = ["nightly", "data", "--cron", "@daily", "--to", "s3://bkt/p"];
        let p = plan(&[&base[..], &["--encrypt-to-file", file]].concat()).unwrap();
        let mut argv = vec!["kubectl-pvbackup".to_string(), "create".into()];
        argv.extend(p.create_args.clone());
        let cli = Cli::try_parse_from(&argv).unwrap();
        let Command::Create(c) = cli.command else {
            panic!("not create")
        };
        assert_eq!(c.encrypt.encrypt_to, [x25519]);
        assert!(c.encrypt.encrypt_to_file.is_empty(), "the file stays here");
        let e = plan(
            &[
                &base[..],
                &["--encrypt-to", x25519, "--drill-cron", "@weekly"],
            ]
            .concat(),
        )
        .unwrap_err();
        assert_eq!(e.kind, crate::exit::ExitKind::Usage);
        assert!(
            e.message
                .contains("--drill-cron cannot drill encrypted backups"),
            "{}",
            e.message
        );
        let e = plan(&[&base[..], &["--encrypt-to", "age1nope"]].concat()).unwrap_err();
        assert_eq!(e.kind, crate::exit::ExitKind::Usage, "{}", e.message);
    }

    /// Whatever the job runs must parse as the plugin's own `create` and `prune`.
    #[test]
    fn job_command_lines_parse_as_create_and_prune() {
        let p = plan(&[
            "nightly",
            "data",
            "shop/logs",
            "--cron",
            "0 3 * * *",
            "--to",
            "s3://bkt/p",
            "--mesh",
            "istio",
            "--compression",
            "gzip",
            "--level",
            "6",
            "--snapshot",
            "never",
            "--endpoint",
            "http://minio:9000",
            "--keep-daily",
            "7",
            "--keep-last",
            "2",
            "--run-as-user",
            "1000",
            "--drill-cron",
            "0 4 * * 0",
        ])
        .unwrap();
        let mut argv = vec!["kubectl-pvbackup".to_string(), "create".into()];
        argv.extend(p.create_args.clone());
        let cli = Cli::try_parse_from(&argv).unwrap();
        let Command::Create(c) = cli.command else {
            panic!("not create")
        };
        assert_eq!(c.pvcs, ["data", "logs"]);
        assert_eq!(c.to, "s3://bkt/p");
        assert_eq!(c.mesh.as_deref(), Some("istio"));
        assert_eq!(c.data.level, Some(6));
        assert_eq!(c.helper.run_as_user, Some(1000));
        assert_eq!(c.store.endpoint.as_deref(), Some("http://minio:9000"));
        assert_eq!(cli.global.namespace.as_deref(), Some("shop"));
        let mut argv = vec!["kubectl-pvbackup".to_string(), "prune".into()];
        argv.extend(p.prune_args.clone().unwrap());
        let Command::Prune(pr) = Cli::try_parse_from(&argv).unwrap().command else {
            panic!("not prune")
        };
        assert_eq!((pr.keep_last, pr.keep_daily, pr.keep_weekly), (2, 7, 0));
        assert!(pr.yes);
        let drill = p.drill.unwrap();
        assert_eq!(drill.cron, "0 4 * * 0");
        let drilled: Vec<String> = drill
            .runs
            .iter()
            .map(|run| {
                let mut argv = vec!["kubectl-pvbackup".to_string(), "drill".into()];
                argv.extend(run.clone());
                let cli = Cli::try_parse_from(&argv).unwrap();
                assert_eq!(cli.global.namespace.as_deref(), Some("shop"));
                let Command::Drill(d) = cli.command else {
                    panic!("not drill")
                };
                assert!(d.latest);
                assert_eq!(d.from.as_deref(), Some("s3://bkt/p"));
                assert_eq!(d.helper.run_as_user, Some(1000));
                assert_eq!(d.store.endpoint.as_deref(), Some("http://minio:9000"));
                d.backup
            })
            .collect();
        assert_eq!(drilled, ["shop/data", "shop/logs"]);
    }

    #[test]
    fn a_drill_needs_named_pvcs_a_valid_cron_and_room_in_the_name() {
        let base = ["--cron", "0 3 * * *", "--to", "s3://bkt/p", "--drill-cron"];
        let err = |args: &[&str]| {
            let mut a: Vec<&str> = args.to_vec();
            a.splice(1..1, base);
            plan(&a).err().map(|f| (f.kind, f.message))
        };
        let (kind, msg) = err(&["nightly", "0 4 * * 0"]).unwrap();
        assert_eq!(kind, crate::exit::ExitKind::Usage);
        assert!(msg.contains("needs the schedule's PVCs named"), "{msg}");
        let (_, msg) = err(&["nightly", "0 4 * *", "data"]).unwrap();
        assert!(msg.starts_with("--drill-cron \"0 4 * *\""), "{msg}");
        let (_, msg) = err(&[&"a".repeat(40), "0 4 * * 0", "data"]).unwrap();
        assert!(msg.contains("too long for --drill-cron"), "{msg}");
        assert!(err(&["nightly", "0 4 * * 0", "data"]).is_none());
    }

    #[test]
    fn bad_input_names_the_fix() {
        let e = |args: &[&str]| plan(args).unwrap_err().to_string();
        assert!(e(&["n", "--cron", "0 3 * *", "--to", "s3://bkt"]).contains("five fields"));
        assert!(e(&["n", "--cron", "@daily", "--to", "/backups"]).contains("not a bucket"));
        assert!(e(&[
            "n",
            "--cron",
            "@daily",
            "--to",
            "s3://bkt",
            "--time-zone",
            "Moon/Base"
        ])
        .contains("IANA"));
        assert!(
            e(&["n", "other/data", "--cron", "@daily", "--to", "s3://bkt"])
                .contains("one schedule per namespace")
        );
        assert!(plan(&["n", "--cron", "@daily", "--to", "s3://bkt"])
            .unwrap()
            .prune_args
            .is_none());
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

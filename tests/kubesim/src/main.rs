//! `kubesim serve` runs a cluster until SIGINT/SIGTERM/SIGHUP; `kubesim status` tells whether
//! one is up; `kubesim fault` injects faults into a running one through its kubeconfig.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kubesim::{Cluster, ClusterOptions, FaultRequest, Scenario};

#[derive(Parser)]
#[command(
    name = "kubesim",
    version,
    about = "A loopback Kubernetes API server and node agent with real sandboxed containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScenarioArg {
    Demo,
    Empty,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a cluster until SIGINT, SIGTERM or SIGHUP.
    ///
    /// Checks the host first (a static busybox that runs, root, tmpfs mounts) and exits 1 naming
    /// what to install. Once the cluster is ready (demo: every pod Running) it writes the
    /// kubeconfig and prints `ready <server-url>`; `kubesim status --kubeconfig F --wait 60`
    /// waits for that. On exit it kills every container, unmounts every volume and removes the
    /// kubeconfig.
    Serve {
        /// Where volumes (`volumes/<namespace>/<pvc>/`), container roots and logs live; one
        /// kubesim per directory. Mounts a killed kubesim left here are unmounted at start.
        #[arg(long)]
        state_dir: PathBuf,
        /// Where to write the admin kubeconfig (once the cluster is ready).
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long, value_enum, default_value = "demo")]
        scenario: ScenarioArg,
        /// Serve no `snapshot.storage.k8s.io` (a cluster without the external-snapshotter).
        #[arg(long)]
        without_snapshot_api: bool,
        /// How long the demo pods may take to run before kubesim gives up.
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        ready_timeout: u64,
        /// Containers of IMAGE run the host binary PATH (with its shared libraries) instead of
        /// the busybox userland: no image is ever pulled, so this is how a pod runs a real
        /// program, e.g. `--image-binary ghcr.io/x/kubectl-pvbackup:0.1.0=target/debug/kubectl-pvbackup`.
        #[arg(long, value_name = "IMAGE=PATH", env = "KUBESIM_IMAGE_BINARIES", value_delimiter = ',', value_parser = parse_image_binary)]
        image_binary: Vec<(String, PathBuf)>,
        /// Cap every exec stream (each direction) at RATE, e.g. `40MB/s`: a long path's
        /// window/RTT limit per connection (the link model, README "faults").
        #[arg(long, value_name = "RATE", value_parser = kubesim::faults::parse_rate)]
        link_per_stream: Option<u64>,
        /// Cap all exec streams together (each direction) at RATE, e.g. `100MB/s`: the thin
        /// pipe every stream shares.
        #[arg(long, value_name = "RATE", value_parser = kubesim::faults::parse_rate)]
        link_shared: Option<u64>,
    },
    /// Tell whether the kubesim a kubeconfig points to is up: prints `ready <server-url>` and
    /// exits 0, or says why not and exits 1.
    Status {
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
        /// Keep asking (every 100 ms) for up to SECONDS until it is ready.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<f64>,
    },
    /// Inject a fault into a running kubesim.
    Fault {
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
        #[command(subcommand)]
        fault: FaultCmd,
    },
}

#[derive(Subcommand)]
enum FaultCmd {
    /// Kill the next exec'd process (crashing its container) after N bytes of stdout.
    KillExec {
        #[arg(long)]
        after_bytes: u64,
        /// How many exec sessions to hit; 0 = every one until cleared.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Reset all API connections and refuse new ones for S seconds.
    Outage {
        #[arg(long)]
        seconds: f64,
    },
    /// Cap exec streams at N bytes per second (the link model's per-stream cap alone).
    Bandwidth {
        #[arg(long)]
        bytes_per_second: u64,
    },
    /// Set the link model: each exec stream at most --per-stream, all together at most
    /// --shared (each direction; an omitted cap is no cap), e.g. `link --per-stream 40MB/s
    /// --shared 100MB/s`.
    Link {
        #[arg(long, value_name = "RATE", value_parser = kubesim::faults::parse_rate)]
        per_stream: Option<u64>,
        #[arg(long, value_name = "RATE", value_parser = kubesim::faults::parse_rate)]
        shared: Option<u64>,
    },
    /// Mark a node NotReady (its kubelet stops answering).
    NodeNotReady { node: String },
    /// Mark a node Ready again.
    NodeReady { node: String },
    /// Make pulls of IMAGE fail.
    FailImage { image: String },
    /// Remove every fault.
    Clear,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("KUBESIM_LOG"))
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubesim: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve {
            state_dir,
            kubeconfig,
            scenario,
            ready_timeout,
            without_snapshot_api,
            image_binary,
            link_per_stream,
            link_shared,
        } => {
            let scenario = match scenario {
                ScenarioArg::Demo => Scenario::Demo,
                ScenarioArg::Empty => Scenario::Empty,
            };
            let mut claim = None;
            let served = rt.block_on(serve(
                &state_dir,
                kubeconfig,
                ClusterOptions {
                    scenario,
                    without_snapshot_api,
                    image_binaries: image_binary,
                    link: kubesim::faults::LinkCaps {
                        per_stream: link_per_stream,
                        shared: link_shared,
                    },
                    ..Default::default()
                },
                ready_timeout,
                &mut claim,
            ));
            // Tasks still running (a provisioner between mount and bookkeeping) end with the
            // runtime; only then is the last sweep sure to see every mount. The claim is held
            // until after it, so that it never touches another kubesim's volumes.
            rt.shutdown_timeout(Duration::from_secs(5));
            let swept = match claim {
                Some(_) => final_sweep(&state_dir),
                None => Ok(()),
            };
            drop(claim);
            served.and(swept)
        }
        other => rt.block_on(run(other)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubesim: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Unmounts whatever is still mounted under the state directory, or names the command to.
fn final_sweep(state_dir: &Path) -> Result<(), String> {
    if let Err(e) = kubesim::volumes::release_all_under(state_dir) {
        let left = kubesim::host::mounts_under(state_dir).unwrap_or_default();
        return Err(format!(
            "{e}; {} mount(s) are left under {}; unmount them with:\n  {}",
            left.len(),
            state_dir.display(),
            kubesim::host::umount_command(&left)
        ));
    }
    Ok(())
}

/// SIGINT, SIGTERM and SIGHUP, registered before anything is mounted so that none of them
/// can end the process without the cleanup.
struct Signals(Vec<tokio::signal::unix::Signal>);

impl Signals {
    fn install() -> Result<Signals, String> {
        use tokio::signal::unix::{signal, SignalKind};
        [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
        ]
        .into_iter()
        .map(|k| signal(k).map_err(|e| format!("cannot handle signals: {e}")))
        .collect::<Result<_, _>>()
        .map(Signals)
    }

    async fn recv(&mut self) {
        let waits = self.0.iter_mut().map(|s| Box::pin(s.recv()));
        futures::future::select_all(waits).await;
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve { .. } => unreachable!("main runs serve itself"),
        Command::Status { kubeconfig, wait } => status(&kubeconfig, wait).await,
        Command::Fault { kubeconfig, fault } => {
            let req = match fault {
                FaultCmd::KillExec { after_bytes, count } => {
                    FaultRequest::KillExec { after_bytes, count }
                }
                FaultCmd::Outage { seconds } => FaultRequest::Outage { seconds },
                FaultCmd::Bandwidth { bytes_per_second } => {
                    FaultRequest::Bandwidth { bytes_per_second }
                }
                FaultCmd::Link { per_stream, shared } => FaultRequest::Link { per_stream, shared },
                FaultCmd::NodeNotReady { node } => FaultRequest::NodeNotReady { node },
                FaultCmd::NodeReady { node } => FaultRequest::NodeReady { node },
                FaultCmd::FailImage { image } => FaultRequest::FailImage { image },
                FaultCmd::Clear => FaultRequest::Clear,
            };
            kubesim::client::post_fault(&kubeconfig, &req).await
        }
    }
}

fn parse_image_binary(s: &str) -> Result<(String, PathBuf), String> {
    let (image, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not IMAGE=PATH"))?;
    let path = std::fs::canonicalize(path)
        .map_err(|e| format!("the binary {path} for image {image} cannot be used: {e}"))?;
    Ok((image.to_string(), path))
}

async fn serve(
    state_dir: &Path,
    kubeconfig: PathBuf,
    options: ClusterOptions,
    ready_timeout: u64,
    claim: &mut Option<kubesim::host::StateDirClaim>,
) -> Result<(), String> {
    let mut signals = Signals::install()?;
    let claimed = kubesim::host::claim_state_dir(state_dir).map_err(|e| e.to_string())?;
    let stale = claimed.stale_unmounted;
    *claim = Some(claimed);
    if stale > 0 {
        eprintln!(
            "kubesim: unmounted {stale} volume(s) that a killed kubesim left under {}",
            state_dir.display()
        );
    }
    let host = kubesim::host::check(state_dir)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("kubesim: {}", host.describe());
    // Written next to the final path and renamed into place once ready, so that the file's
    // existence means "ready" to `kubesim status` and to scripts.
    let staging = kubeconfig.with_file_name(format!(
        ".{}.starting",
        kubeconfig
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "kubeconfig".into())
    ));
    let scenario = options.scenario;
    let start = Cluster::start(ClusterOptions {
        state_dir: Some(state_dir.to_path_buf()),
        kubeconfig: Some(staging.clone()),
        ..options
    });
    // `biased`: a signal that came while the host was checked wins over a startup that is
    // also done.
    let cluster = tokio::select! {
        biased;
        _ = signals.recv() => return Ok(()),
        c = start => c.map_err(|e| e.to_string())?,
    };
    if scenario == Scenario::Demo {
        tokio::select! {
            biased;
            _ = signals.recv() => {
                cluster.shutdown().await;
                let _ = std::fs::remove_file(&staging);
                return Ok(());
            }
            r = cluster.wait_for_pods_running(Duration::from_secs(ready_timeout)) => {
                if let Err(e) = r {
                    cluster.shutdown().await;
                    let _ = std::fs::remove_file(&staging);
                    return Err(e.to_string());
                }
            }
        }
    }
    let written =
        std::fs::read(&staging).map_err(|e| format!("reading {}: {e}", staging.display()));
    let published = written.and_then(|text| {
        std::fs::rename(&staging, &kubeconfig)
            .map(|()| text)
            .map_err(|e| format!("cannot write kubeconfig {}: {e}", kubeconfig.display()))
    });
    let text = match published {
        Ok(text) => text,
        Err(e) => {
            cluster.shutdown().await;
            let _ = std::fs::remove_file(&staging);
            return Err(e);
        }
    };
    println!("ready {}", cluster.url());
    signals.recv().await;
    cluster.shutdown().await;
    // Only our own file: a kubeconfig someone rewrote since is theirs.
    if std::fs::read(&kubeconfig).is_ok_and(|now| now == text) {
        let _ = std::fs::remove_file(&kubeconfig);
    }
    Ok(())
}

async fn status(kubeconfig: &Path, wait: Option<f64>) -> Result<(), String> {
    let deadline = wait.map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    loop {
        let answer =
            tokio::time::timeout(Duration::from_secs(5), kubesim::client::status(kubeconfig))
                .await
                .unwrap_or_else(|_| Err("no answer within 5 s".into()));
        match answer {
            Ok(url) => {
                println!("ready {url}");
                return Ok(());
            }
            Err(why) => match deadline {
                Some(d) if tokio::time::Instant::now() < d => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Some(_) => return Err(format!("{why} (waited {}s)", wait.unwrap_or_default())),
                None => return Err(why),
            },
        }
    }
}

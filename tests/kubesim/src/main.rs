//! `kubesim serve` runs a cluster until SIGINT/SIGTERM; `kubesim fault` injects faults into a
//! running one through its kubeconfig.

use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Serve a cluster; prints `ready <server-url>` once it accepts requests.
    Serve {
        /// Where volumes (`volumes/<namespace>/<pvc>/`), container roots and logs live.
        #[arg(long)]
        state_dir: PathBuf,
        /// Where to write the admin kubeconfig.
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long, value_enum, default_value = "demo")]
        scenario: ScenarioArg,
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
    /// Cap exec streams at N bytes per second.
    Bandwidth {
        #[arg(long)]
        bytes_per_second: u64,
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
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubesim: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve {
            state_dir,
            kubeconfig,
            scenario,
        } => {
            let scenario = match scenario {
                ScenarioArg::Demo => Scenario::Demo,
                ScenarioArg::Empty => Scenario::Empty,
            };
            let cluster = Cluster::start(ClusterOptions {
                state_dir: Some(state_dir),
                kubeconfig: Some(kubeconfig),
                scenario,
            })
            .await
            .map_err(|e| e.to_string())?;
            if scenario == Scenario::Demo {
                cluster
                    .wait_for_pods_running(std::time::Duration::from_secs(60))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            println!("ready {}", cluster.url());
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .map_err(|e| e.to_string())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            cluster.shutdown().await;
            Ok(())
        }
        Command::Fault { kubeconfig, fault } => {
            let req = match fault {
                FaultCmd::KillExec { after_bytes, count } => {
                    FaultRequest::KillExec { after_bytes, count }
                }
                FaultCmd::Outage { seconds } => FaultRequest::Outage { seconds },
                FaultCmd::Bandwidth { bytes_per_second } => {
                    FaultRequest::Bandwidth { bytes_per_second }
                }
                FaultCmd::NodeNotReady { node } => FaultRequest::NodeNotReady { node },
                FaultCmd::NodeReady { node } => FaultRequest::NodeReady { node },
                FaultCmd::FailImage { image } => FaultRequest::FailImage { image },
                FaultCmd::Clear => FaultRequest::Clear,
            };
            kubesim::client::post_fault(&kubeconfig, &req).await
        }
    }
}

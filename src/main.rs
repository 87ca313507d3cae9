//! kubectl-pvbackup: parse, log to stderr, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use kubectl_pvbackup::{
    cli::{completion_request, Cli},
    exit::ExitKind,
    run,
};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(words) = completion_request(&args) {
        // No logging set up: kubectl shows the completer's stderr in the user's terminal.
        kubectl_pvbackup::cmd::complete::answer(&words);
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse_from(args);
    let level = match cli.global.verbose {
        // kube-rs logs every failed request at ERROR; during an outage that is noise next to
        // our own account of each attempt (and its retry), so it shows from -v on.
        0 => "warn,kube_client=off",
        1 => "info,kube=warn",
        2 => "debug,kube=info,hyper=info",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PVBACKUP_LOG")
                .unwrap_or_else(|_| level.into()),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(ExitKind::Runtime.code());
        }
    };
    let outcome = rt.block_on(run::run(cli));
    // Never hang on exit waiting for a blocking reader whose stream is gone.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {f}");
            ExitCode::from(f.kind.code())
        }
    }
}

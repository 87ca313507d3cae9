//! `kubectl pvbackup version`.

use crate::cli::OutputFormat;
use crate::exit::Failure;
use crate::output;

/// The package version, without commit or target (release archives and man pages use it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn info() -> serde_json::Value {
    serde_json::json!({
        "version": VERSION,
        "gitCommit": option_env!("PVBACKUP_GIT_COMMIT").unwrap_or("unknown"),
        "target": option_env!("PVBACKUP_TARGET").unwrap_or("unknown"),
    })
}

pub fn run(format: OutputFormat) -> Result<(), Failure> {
    let v = info();
    match format {
        OutputFormat::Json | OutputFormat::Yaml => output::structured(format, &v),
        _ => output::print_stdout(&format!(
            "kubectl-pvbackup {} (commit {}, {})\n",
            v["version"].as_str().unwrap_or_default(),
            v["gitCommit"].as_str().unwrap_or_default(),
            v["target"].as_str().unwrap_or_default()
        )),
    }
}

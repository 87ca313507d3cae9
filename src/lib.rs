//! kubectl-pvbackup: back up and restore the PersistentVolumeClaims of service-mesh workloads.

pub mod archive;
pub mod attempts;
pub mod backup;
pub mod cli;
pub mod cmd;
pub mod collect;
pub mod complete;
pub mod confirm;
pub mod connect;
pub mod destination;
pub mod discover;
pub mod encryption;
pub mod exit;
pub mod helper_pod;
pub mod helper_session;
pub mod hooks;
pub mod locate;
pub mod manifest;
pub mod output;
pub mod progress;
pub mod restore;
pub mod retention;
pub mod retry;
pub mod run;
pub mod signals;
pub mod snapshot;

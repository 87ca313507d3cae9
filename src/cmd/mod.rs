//! One module per subcommand, each with one entry function that takes a validated plan.

pub mod cleanup;
pub mod complete;
pub mod completion;
pub mod create;
pub mod discover;
pub mod drill;
pub mod inspect;
pub mod list;
pub mod prune;
pub mod restore;
pub mod schedule;
pub mod verify;
pub mod version;

pub mod archive;
pub mod discover;
pub mod helper_pod;
pub mod manifest;

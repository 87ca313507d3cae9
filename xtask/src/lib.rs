//! Release tasks for kubectl-pvbackup, as a library so the plugin's tests run the same code
//! as `cargo xtask`: generated completions and man pages (`docs`), release archives
//! (`package`), the Krew manifest (`krew`), and the container image (`image`).

pub mod docs;
pub mod image;
pub mod krew;
pub mod package;

/// The repository root (this crate lives in `<root>/xtask`).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the repository")
        .to_path_buf()
}

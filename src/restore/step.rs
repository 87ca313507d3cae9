//! The in-pod protocol of a restore, typed: every step the helper pod runs is a [`Step`], and
//! [`Step::argv`] is the one place that turns it into an exec command line. What each step
//! reads, prints and leaves on the volume when it is stopped half-way is written on its
//! script in [`super::script`]; every script is idempotent with [`Step::Rollback`].

use super::script;
use super::Mode;

/// One command in the helper pod. `mount` (the PVC's mount path, read from the helper pod's
/// spec) is given to [`Step::argv`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'a> {
    /// `df -Pk MOUNT`: the volume's free space (POSIX format, KiB).
    FreeSpace,
    /// [`script::ROOM`]: prints `FREE HELD` in KiB (free space, and what all but `keep` holds).
    Room { keep: &'a [String] },
    /// Creates this run's staging directory and extracts the archive on stdin into it.
    /// Stopped: a partial staging directory, which [`Step::Rollback`] removes.
    ExtractStaged { run_id: &'a str },
    /// `--in-place`: extracts the archive on stdin straight into the volume.
    ExtractInPlace,
    /// [`script::FIX_SYMLINKS`]: `chown -h` of `(uid:gid, ./path)` pairs under `dir`.
    FixSymlinks {
        dir: &'a str,
        owners: &'a [(String, String)],
    },
    /// [`script::LIST`]: every entry under `dir` (this run's entries skipped), hashed or not.
    List {
        dir: &'a str,
        run_id: &'a str,
        hash: bool,
    },
    /// [`script::SWAP_REPLACE`] or [`script::SWAP_MERGE`].
    Swap {
        run_id: &'a str,
        mode: Mode,
        keep: &'a [String],
    },
    /// [`script::COMMIT`]: drops the originals of a verified swap.
    Commit { run_id: &'a str },
    /// [`script::ROLLBACK`]: back to the originals from any state the other steps leave.
    Rollback {
        run_id: &'a str,
        mode: Mode,
        keep: &'a [String],
    },
    /// [`script::CLEAR`]: `--in-place`'s delete of everything but `keep`.
    Clear { keep: &'a [String] },
}

/// `sh -c SCRIPT NAME ARGS...`: `NAME` is the script's `$0`.
fn sh(script: &str, name: &str, args: impl IntoIterator<Item = String>) -> Vec<String> {
    ["sh", "-c", script, name]
        .iter()
        .map(|s| s.to_string())
        .chain(args)
        .collect()
}

impl Step<'_> {
    /// The command line of this step, for a helper pod that mounts the volume at `mount`.
    pub fn argv(&self, mount: &str) -> Vec<String> {
        let owned = |v: &[String]| v.to_vec();
        match self {
            Step::FreeSpace => vec!["df".into(), "-Pk".into(), mount.into()],
            Step::Room { keep } => sh(script::ROOM, script::ROOM, owned(keep)),
            Step::ExtractStaged { run_id } => sh(
                "mkdir -m 700 \"$1\" && exec tar -x --numeric-owner -f - -C \"$1\"",
                "sh",
                [format!("{mount}/{}", script::staging_name(run_id))],
            ),
            Step::ExtractInPlace => sh(
                "exec tar -x --numeric-owner -f - -C \"$1\"",
                "sh",
                [mount.to_string()],
            ),
            Step::FixSymlinks { dir, owners } => sh(
                script::FIX_SYMLINKS,
                "sh",
                std::iter::once(dir.to_string())
                    .chain(owners.iter().flat_map(|(o, p)| [o.clone(), p.clone()])),
            ),
            Step::List { dir, run_id, hash } => sh(
                script::LIST,
                script::LIST,
                [
                    dir.to_string(),
                    run_id.to_string(),
                    if *hash { "hash" } else { "stat" }.to_string(),
                ],
            ),
            Step::Swap {
                run_id,
                mode: Mode::Replace,
                keep,
            } => sh(
                script::SWAP_REPLACE,
                "sh",
                std::iter::once(run_id.to_string()).chain(owned(keep)),
            ),
            Step::Swap {
                run_id,
                mode: Mode::Merge,
                ..
            } => sh(script::SWAP_MERGE, script::SWAP_MERGE, [run_id.to_string()]),
            Step::Commit { run_id } => sh(script::COMMIT, "sh", [run_id.to_string()]),
            Step::Rollback { run_id, mode, keep } => sh(
                script::ROLLBACK,
                "sh",
                [run_id.to_string(), mode.as_str().to_string()]
                    .into_iter()
                    .chain(owned(keep)),
            ),
            Step::Clear { keep } => sh(script::CLEAR, script::CLEAR, owned(keep)),
        }
    }
}

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
    /// [`script::ROOM`]: prints `FREE HELD` in KiB (free space, and what all but `keep` holds).
    Room { keep: &'a [String] },
    /// [`script::PREPARE`]: refuses (`noroom FREE`) when `need_kib` does not fit; else, with
    /// `direct` allowed and an empty volume, records what [`Step::Rollback`] needs to empty it
    /// again (`direct FREE CPUS`), or creates this run's staging directory (`staged FREE CPUS`).
    Prepare {
        run_id: &'a str,
        need_kib: u64,
        direct: bool,
    },
    /// [`script::EXTRACT`]: extracts the archive on stdin into `dir`, then marks the end of the
    /// extraction for the hashers. Stopped: a partial tree in `dir` (staging, or the volume of a
    /// direct or in-place restore), which [`Step::Rollback`] removes (but in place).
    Extract { dir: &'a str, done: &'a str },
    /// [`script::HASH`]: hashes chunks of files under `dir` (on stdin, see
    /// [`script::hash_plan`]) as the extraction finishes them; `done` is the end marker.
    Hash { dir: &'a str, done: &'a str },
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
    /// What the step is, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Room { .. } => "room",
            Step::Prepare { .. } => "prepare",
            Step::Extract { .. } => "extract",
            Step::Hash { .. } => "hash",
            Step::FixSymlinks { .. } => "fix-symlinks",
            Step::List { .. } => "list",
            Step::Swap { .. } => "swap",
            Step::Commit { .. } => "commit",
            Step::Rollback { .. } => "rollback",
            Step::Clear { .. } => "clear",
        }
    }

    /// The command line of this step, for a helper pod that mounts the volume at `mount`.
    pub fn argv(&self, mount: &str) -> Vec<String> {
        let owned = |v: &[String]| v.to_vec();
        match self {
            Step::Room { keep } => sh(script::ROOM, script::ROOM, owned(keep)),
            Step::Prepare {
                run_id,
                need_kib,
                direct,
            } => sh(
                script::PREPARE,
                script::PREPARE,
                [
                    mount.to_string(),
                    run_id.to_string(),
                    need_kib.to_string(),
                    if *direct { "auto" } else { "stage" }.to_string(),
                ],
            ),
            Step::Extract { dir, done } => sh(
                script::EXTRACT,
                script::EXTRACT,
                [dir.to_string(), done.to_string()],
            ),
            Step::Hash { dir, done } => sh(
                script::HASH,
                script::HASH,
                [
                    dir.to_string(),
                    done.to_string(),
                    (script::HASH_CHUNK_FILES + 1).to_string(),
                ],
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

//! The in-pod protocol of a restore, typed: every command the helper pod runs is a [`Step`],
//! and [`Step::argv`] is the one place that turns it into an exec command line. What each
//! step reads, prints and leaves on the volume when it is stopped half-way is written on its
//! script in [`super::script`]; every script is idempotent with [`Step::Rollback`].
//!
//! Every step runs with the paths of the pod it runs in ([`InPod`], read from the pod spec).
//! A step that changes the volume first marks itself busy in the pod's run directory and
//! refuses to start once the helper's lease has expired, so that the helper's own rollback
//! (its watchdog, see `helper_pod`) never runs next to it.

use super::script;
use super::Mode;

/// Where the helper pod mounts the volume and its scratch directory (from its pod spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InPod<'a> {
    pub mount: &'a str,
    pub run: &'a str,
}

/// One command in the helper pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'a> {
    /// [`script::ROOM`]: prints `FREE HELD` in KiB (free space, and what all but `keep` holds).
    Room { keep: &'a [String] },
    /// [`script::RECOVER`]: rolls back unfinished runs (all, or `only`) and deletes what
    /// finished ones left; prints what it did ([`script::parse_recovered`]).
    Recover { only: Option<&'a str> },
    /// [`script::BEGIN`]: writes the run's journal.
    Begin {
        run_id: &'a str,
        mode: Mode,
        keep: &'a [String],
    },
    /// [`script::PREPARE`]: refuses (`noroom FREE`) when `need_kib` does not fit; else, with
    /// `direct` allowed and an empty volume, records what [`Step::Rollback`] needs to empty it
    /// again (`direct FREE CPUS`), or creates this run's staging directory (`staged FREE CPUS`).
    Prepare {
        run_id: &'a str,
        need_kib: u64,
        direct: bool,
    },
    /// [`script::EXTRACT`]: extracts the archive on stdin (decompressed, padded with zeros to
    /// `bytes`, see [`script::padded`]) into
    /// `dir`, then marks the end of the extraction for the hashers. Stopped: a partial tree in
    /// `dir` (staging, or the volume of a direct or in-place restore), which [`Step::Rollback`]
    /// removes (but in place).
    Extract {
        dir: &'a str,
        done: &'a str,
        bytes: u64,
    },
    /// [`script::HASH`]: hashes chunks of files under `dir` (on stdin, see
    /// [`script::HashChunks`]) as the extraction finishes them; `done` is the end marker.
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
    /// Seconds since the helper's lease was last renewed (`helper_pod::LEASE_FILE`).
    LeaseAge,
}

/// Shell functions every script may call: `phase NAME` marks the end of a phase (a test sets
/// `PVB_STOP_AFTER=NAME` to kill the script right there; a helper pod never sets it).
const FUNCTIONS: &str = r#"phase() { echo "$1"; if [ "${PVB_STOP_AFTER:-}" = "$1" ]; then kill -9 $$; fi; }
"#;

/// Single-quoted for `sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `export PVB_MOUNT=… PVB_RUN=…`: the pod's paths for the scripts (and the shells they
/// start).
fn environment(pod: &InPod) -> String {
    format!(
        "export PVB_MOUNT={} PVB_RUN={}\n",
        quote(pod.mount),
        quote(pod.run)
    )
}

/// Marks the step busy while it runs (its pid in a file the watchdog waits on) and refuses
/// to start once the watchdog has seen the lease expire (exit 75, EX_TEMPFAIL).
const GUARD: &str = r#"b="$PVB_RUN/pvbackup-busy.$$"; : > "$b"; trap 'rm -f "$b"' EXIT
if [ -e "$PVB_RUN/pvbackup-expired" ]; then
  echo "this helper pod's lease expired (its client stopped renewing it), so it rolled back and takes no more steps" >&2
  exit 75
fi
"#;

/// A script with the functions it may call, as its own `$0` (the self-invoking scripts run
/// `$0` again under `find -exec`).
fn with_functions(script: &str) -> String {
    format!("{FUNCTIONS}{script}")
}

impl Step<'_> {
    /// What the step is, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Room { .. } => "room",
            Step::Recover { .. } => "recover",
            Step::Begin { .. } => "begin",
            Step::Prepare { .. } => "prepare",
            Step::Extract { .. } => "extract",
            Step::Hash { .. } => "hash",
            Step::FixSymlinks { .. } => "fix-symlinks",
            Step::List { .. } => "list",
            Step::Swap { .. } => "swap",
            Step::Commit { .. } => "commit",
            Step::Rollback { .. } => "rollback",
            Step::Clear { .. } => "clear",
            Step::LeaseAge => "lease-age",
        }
    }

    /// Whether the step changes the volume (and so is guarded, see [`GUARD`]).
    fn changes_the_volume(&self) -> bool {
        !matches!(
            self,
            Step::Room { .. } | Step::List { .. } | Step::Hash { .. } | Step::LeaseAge
        )
    }

    /// The script, its `$0` name, and its arguments.
    fn parts(&self) -> (String, bool, Vec<String>) {
        let owned = |v: &[String]| v.to_vec();
        // (script, run as its own $0, args)
        match self {
            Step::LeaseAge => unreachable!("not a script"),
            Step::Room { keep } => (script::ROOM.into(), true, owned(keep)),
            Step::Recover { only } => (
                script::RECOVER.into(),
                false,
                vec![
                    only.unwrap_or_default().to_string(),
                    with_functions(script::ROLLBACK),
                ],
            ),
            Step::Begin { run_id, mode, keep } => (
                script::BEGIN.into(),
                false,
                [run_id.to_string(), mode.as_str().to_string()]
                    .into_iter()
                    .chain(owned(keep))
                    .collect(),
            ),
            Step::Prepare {
                run_id,
                need_kib,
                direct,
            } => (
                script::PREPARE.into(),
                false,
                vec![
                    run_id.to_string(),
                    need_kib.to_string(),
                    if *direct { "auto" } else { "stage" }.to_string(),
                ],
            ),
            Step::Extract { dir, done, bytes } => (
                script::EXTRACT.into(),
                false,
                vec![dir.to_string(), done.to_string(), bytes.to_string()],
            ),
            Step::Hash { dir, done } => (
                script::HASH.into(),
                false,
                vec![
                    dir.to_string(),
                    done.to_string(),
                    (script::HASH_CHUNK_FILES + 1).to_string(),
                ],
            ),
            Step::FixSymlinks { dir, owners } => (
                script::FIX_SYMLINKS.into(),
                false,
                std::iter::once(dir.to_string())
                    .chain(owners.iter().flat_map(|(o, p)| [o.clone(), p.clone()]))
                    .collect(),
            ),
            Step::List { dir, run_id, hash } => (
                script::LIST.into(),
                true,
                vec![
                    dir.to_string(),
                    run_id.to_string(),
                    if *hash { "hash" } else { "stat" }.to_string(),
                ],
            ),
            Step::Swap {
                run_id,
                mode: Mode::Replace,
                keep,
            } => (
                script::SWAP_REPLACE.into(),
                false,
                std::iter::once(run_id.to_string())
                    .chain(owned(keep))
                    .collect(),
            ),
            Step::Swap {
                run_id,
                mode: Mode::Merge,
                ..
            } => (script::SWAP_MERGE.into(), true, vec![run_id.to_string()]),
            Step::Commit { run_id } => (script::COMMIT.into(), false, vec![run_id.to_string()]),
            Step::Rollback { run_id, mode, keep } => (
                script::ROLLBACK.into(),
                false,
                [run_id.to_string(), mode.as_str().to_string()]
                    .into_iter()
                    .chain(owned(keep))
                    .collect(),
            ),
            Step::Clear { keep } => (script::CLEAR.into(), true, owned(keep)),
        }
    }

    /// The command line of this step in a helper pod with the paths `pod`.
    pub fn argv(&self, pod: &InPod) -> Vec<String> {
        if let Step::LeaseAge = self {
            return vec![
                "sh".into(),
                "-c".into(),
                "echo $(( $(date +%s) - $(stat -c %Y \"$1\") ))".into(),
                "sh".into(),
                format!("{}/{}", pod.run, crate::helper_pod::LEASE_FILE),
            ];
        }
        let (body, self_named, args) = self.parts();
        let body = with_functions(&body);
        let guard = if self.changes_the_volume() { GUARD } else { "" };
        let name = if self_named {
            body.clone()
        } else {
            "sh".into()
        };
        ["sh".to_string(), "-c".to_string()]
            .into_iter()
            .chain([format!("{}{guard}{body}", environment(pod)), name])
            .chain(args)
            .collect()
    }
}

/// What the helper pod's watchdog runs when its lease expires: the rollback of run `run_id`
/// (and the removal of what it left), unguarded — the watchdog has already waited for every
/// busy step to end.
pub fn on_lease_expiry(pod: &InPod, run_id: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("{}{}", environment(pod), with_functions(script::RECOVER)),
        "sh".into(),
        run_id.to_string(),
        with_functions(script::ROLLBACK),
    ]
}

/// Every step against real busybox (the helper image's userland), on a temporary directory
/// standing in for the volume: stopped after each of its phases, then rolled back.
#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    use super::*;

    fn busybox() -> PathBuf {
        std::env::var_os("PATH")
            .and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("busybox"))
                    .find(|b| b.exists())
            })
            .expect(
                "busybox is needed for this test (apt-get install busybox-static; .ci/run does)",
            )
    }

    /// A directory of links to every busybox applet, first in PATH: the shells that `find
    /// -exec` starts then run busybox's tools too, as in the helper image.
    fn applets() -> &'static Path {
        static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
        DIR.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let list = Command::new(busybox()).arg("--list").output().unwrap();
            for applet in String::from_utf8_lossy(&list.stdout).lines() {
                let _ = std::os::unix::fs::symlink(busybox(), dir.path().join(applet));
            }
            dir
        })
        .path()
    }

    struct Pod {
        vol: tempfile::TempDir,
        run: tempfile::TempDir,
    }

    struct Ran {
        ok: bool,
        code: Option<i32>,
        stdout: String,
        stderr: String,
    }

    impl Pod {
        fn new() -> Pod {
            Pod {
                vol: tempfile::tempdir().unwrap(),
                run: tempfile::tempdir().unwrap(),
            }
        }
        fn paths(&self) -> (String, String) {
            (
                self.vol.path().to_str().unwrap().to_string(),
                self.run.path().to_str().unwrap().to_string(),
            )
        }
        /// Runs `step` as the helper pod would, killed right after phase `stop` when given.
        fn run(&self, step: &Step, stdin: &[u8], stop: Option<&str>) -> Ran {
            let (mount, run) = self.paths();
            let argv = step.argv(&InPod {
                mount: &mount,
                run: &run,
            });
            self.exec(&argv, stdin, stop)
        }
        fn exec(&self, argv: &[String], stdin: &[u8], stop: Option<&str>) -> Ran {
            let mut cmd = Command::new(busybox());
            cmd.args(argv)
                .env("PATH", applets())
                .env_remove("PVB_STOP_AFTER")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if let Some(s) = stop {
                cmd.env("PVB_STOP_AFTER", s);
            }
            let mut child = cmd.spawn().unwrap();
            let mut input = child.stdin.take().unwrap();
            let data = stdin.to_vec();
            let feeder = std::thread::spawn(move || {
                use std::io::Write;
                let _ = input.write_all(&data);
            });
            let out = child.wait_with_output().unwrap();
            feeder.join().unwrap();
            Ran {
                ok: out.status.success(),
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into(),
                stderr: String::from_utf8_lossy(&out.stderr).into(),
            }
        }
        fn must(&self, step: &Step, stdin: &[u8]) -> String {
            let r = self.run(step, stdin, None);
            assert!(r.ok, "{step:?} failed: {}", r.stderr);
            r.stdout
        }
    }

    /// path → (kind, mode, owner, content or link target) of everything under `root`.
    fn tree(root: &Path) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let md = std::fs::symlink_metadata(&p).unwrap();
                let what = if md.file_type().is_symlink() {
                    format!("link {}", std::fs::read_link(&p).unwrap().display())
                } else if md.is_dir() {
                    stack.push(p.clone());
                    "dir".to_string()
                } else {
                    format!("file {:?}", std::fs::read(&p).unwrap())
                };
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(
                    rel,
                    format!(
                        "{what} {:o} {}:{}",
                        md.permissions().mode() & 0o7777,
                        md.uid(),
                        md.gid()
                    ),
                );
            }
        }
        let md = std::fs::metadata(root).unwrap();
        out.insert(
            ".".into(),
            format!("root {:o}", md.permissions().mode() & 0o7777),
        );
        out
    }

    /// The tree before the restore.
    fn old_tree(vol: &Path) {
        std::fs::create_dir_all(vol.join("d/deep")).unwrap();
        std::fs::write(vol.join("a"), b"old a").unwrap();
        std::fs::write(vol.join("only-old"), b"gone after a replace").unwrap();
        std::fs::write(vol.join("d/deep/f"), b"old f").unwrap();
        std::fs::create_dir(vol.join("lost+found")).unwrap();
        std::os::unix::fs::symlink("a", vol.join("l")).unwrap();
        std::fs::set_permissions(vol, std::fs::Permissions::from_mode(0o750)).unwrap();
    }

    /// The backup: a tar stream of another tree (with `.` as its first member, as `create`
    /// makes it).
    fn backup_tar() -> (Vec<u8>, BTreeMap<String, String>) {
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        std::fs::create_dir_all(s.join("d/new-dir")).unwrap();
        std::fs::write(s.join("a"), b"new a").unwrap();
        std::fs::write(s.join("d/new-dir/g"), b"new g").unwrap();
        std::fs::write(s.join("only-new"), b"new").unwrap();
        std::os::unix::fs::symlink("only-new", s.join("l")).unwrap();
        std::fs::set_permissions(s, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = Command::new(busybox())
            .args(["tar", "-cf", "-", "-C"])
            .arg(s)
            .arg(".")
            .output()
            .unwrap();
        assert!(out.status.success());
        // Padded, as the restore sends it.
        let mut tar = out.stdout;
        tar.resize(script::padded(tar.len() as u64) as usize, 0);
        (tar, tree(s))
    }

    const ID: &str = "20261201t000000-abcd";
    /// This run's staging directory and end-of-extraction marker, relative to the volume.
    const STAGING: &str = ".pvbackup-staging-20261201t000000-abcd";
    const DONE: &str = ".pvbackup-extracted-20261201t000000-abcd";

    /// The steps of a staged restore, in order, each with the phases it can be stopped after
    /// (`None`: after the whole step).
    fn staged(
        mode: Mode,
        keep: &[String],
        bytes: u64,
    ) -> Vec<(Step<'_>, Vec<Option<&'static str>>)> {
        let swap_phases = match mode {
            Mode::Replace => vec![Some("moved-out"), None],
            Mode::Merge => vec![Some("dirs-merged"), None],
        };
        vec![
            (
                Step::Begin {
                    run_id: ID,
                    mode,
                    keep,
                },
                vec![None],
            ),
            (
                Step::Prepare {
                    run_id: ID,
                    need_kib: 0,
                    direct: false,
                },
                vec![None],
            ),
            (
                Step::Extract {
                    dir: STAGING,
                    done: DONE,
                    bytes,
                },
                vec![None],
            ),
            (
                Step::Swap {
                    run_id: ID,
                    mode,
                    keep,
                },
                swap_phases,
            ),
            (Step::Commit { run_id: ID }, vec![Some("committed"), None]),
        ]
    }

    fn leftovers(vol: &Path) -> Vec<String> {
        std::fs::read_dir(vol)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".pvbackup-"))
            .collect()
    }

    /// For both modes, every step stopped after each of its phases, then RECOVER (what the
    /// helper's watchdog, the next restore and `cleanup` run): before the commit point the
    /// volume is exactly the old tree again; after it, exactly the restored one. Nothing of
    /// the run is left either way, and a ROLLBACK stopped half-way is finished by RECOVER.
    #[test]
    fn stopped_after_any_phase_recover_ends_on_the_old_tree_or_the_backup() {
        let (tar, backup) = backup_tar();
        let keep = vec!["lost+found".to_string()];
        for mode in [Mode::Replace, Mode::Merge] {
            // The tree a complete restore leaves, for comparison.
            let done = Pod::new();
            old_tree(done.vol.path());
            for (step, _) in staged(mode, &keep, tar.len() as u64) {
                done.must(&step, &tar);
            }
            let restored = tree(done.vol.path());
            assert!(leftovers(done.vol.path()).is_empty());
            if mode == Mode::Replace {
                let mut want = backup.clone();
                want.insert("lost+found".into(), restored["lost+found"].clone());
                assert_eq!(restored, want, "a replace leaves the backup");
            }
            let steps = staged(mode, &keep, tar.len() as u64);
            for (i, (step, phases)) in steps.iter().enumerate() {
                for stop in phases {
                    let what = format!("{mode:?}: stopped after {step:?} phase {stop:?}");
                    let pod = Pod::new();
                    old_tree(pod.vol.path());
                    let old = tree(pod.vol.path());
                    for (earlier, _) in &steps[..i] {
                        pod.must(earlier, &tar);
                    }
                    let r = pod.run(step, &tar, *stop);
                    match stop {
                        Some(_) => assert_eq!(r.code, None, "{what}: not killed: {}", r.stderr),
                        None => assert!(r.ok, "{what}: {}", r.stderr),
                    }
                    let committed = matches!(step, Step::Commit { .. });
                    if !committed {
                        // A rollback stopped half-way first: RECOVER finishes it.
                        let rb = Step::Rollback {
                            run_id: ID,
                            mode,
                            keep: &keep,
                        };
                        let _ = pod.run(&rb, b"", Some("restored"));
                    }
                    let out = pod.must(&Step::Recover { only: None }, b"");
                    assert!(
                        leftovers(pod.vol.path()).is_empty(),
                        "{what}: {:?}",
                        leftovers(pod.vol.path())
                    );
                    let want = if committed { &restored } else { &old };
                    assert_eq!(&tree(pod.vol.path()), want, "{what}\nRECOVER said: {out}");
                }
            }
        }
    }

    /// A restore straight into an empty volume (a new PVC: an empty `lost+found` at most),
    /// stopped after any step, then RECOVER: before the commit point the volume is empty
    /// again (and RECOVER says it emptied it); after it, exactly the restored tree.
    #[test]
    fn a_direct_restore_stopped_anywhere_leaves_the_volume_empty_or_restored() {
        let (tar, backup) = backup_tar();
        let keep = vec!["lost+found".to_string()];
        let empty = |pod: &Pod| {
            let lf = pod.vol.path().join("lost+found");
            std::fs::create_dir(&lf).unwrap();
            std::fs::set_permissions(&lf, std::fs::Permissions::from_mode(0o700)).unwrap();
        };
        let steps = [
            Step::Begin {
                run_id: ID,
                mode: Mode::Replace,
                keep: &keep,
            },
            Step::Prepare {
                run_id: ID,
                need_kib: 0,
                direct: true,
            },
            Step::Extract {
                dir: ".",
                done: DONE,
                bytes: tar.len() as u64,
            },
            Step::Commit { run_id: ID },
        ];
        // The whole run: PREPARE chose the direct way although BEGIN's journal is there.
        let full = Pod::new();
        empty(&full);
        for step in &steps {
            let out = full.must(step, &tar);
            if matches!(step, Step::Prepare { .. }) {
                assert!(out.starts_with("direct "), "{out}");
            }
        }
        let restored = tree(full.vol.path());
        assert!(leftovers(full.vol.path()).is_empty());
        let mut want = backup.clone();
        want.insert("lost+found".into(), restored["lost+found"].clone());
        assert_eq!(restored, want);
        for (i, step) in steps.iter().enumerate() {
            for stop in [None, Some("committed")] {
                let committed = matches!(step, Step::Commit { .. });
                if stop.is_some() && !committed {
                    continue;
                }
                let what = format!("stopped after {step:?} phase {stop:?}");
                let pod = Pod::new();
                empty(&pod);
                let old = tree(pod.vol.path());
                for earlier in &steps[..i] {
                    pod.must(earlier, &tar);
                }
                let r = pod.run(step, &tar, stop);
                match stop {
                    Some(_) => assert_eq!(r.code, None, "{what}: not killed: {}", r.stderr),
                    None => assert!(r.ok, "{what}: {}", r.stderr),
                }
                let out = pod.must(&Step::Recover { only: None }, b"");
                assert!(leftovers(pod.vol.path()).is_empty(), "{what}");
                let want = if committed { &restored } else { &old };
                assert_eq!(&tree(pod.vol.path()), want, "{what}\nRECOVER said: {out}");
                let said = script::parse_recovered(&out);
                if i >= 1 && !committed {
                    assert_eq!(
                        said,
                        [script::Recovered::Emptied { run_id: ID.into() }],
                        "{what}"
                    );
                }
            }
        }
    }

    /// What RECOVER reports, and that it leaves other runs alone when told to.
    #[test]
    fn recover_says_what_it_did_and_can_keep_to_one_run() {
        let (tar, _) = backup_tar();
        let keep: Vec<String> = vec![];
        let pod = Pod::new();
        old_tree(pod.vol.path());
        let old = tree(pod.vol.path());
        // A finished run's leftover (RECOVER runs before every restore, so none is there
        // when a swap starts; the swap keeps it aside all the same).
        std::fs::create_dir(pod.vol.path().join(".pvbackup-trash-other-1")).unwrap();
        for (step, _) in &staged(Mode::Replace, &keep, tar.len() as u64)[..4] {
            pod.must(step, &tar);
        }
        let out = pod.must(
            &Step::Recover {
                only: Some("unrelated"),
            },
            b"",
        );
        assert_eq!(out, "");
        assert!(!leftovers(pod.vol.path()).is_empty());
        let out = pod.must(&Step::Recover { only: None }, b"");
        let mut said = script::parse_recovered(&out);
        said.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(
            said,
            [
                script::Recovered::Removed {
                    name: ".pvbackup-trash-other-1".into()
                },
                script::Recovered::RolledBack { run_id: ID.into() },
            ]
        );
        let mut want = old.clone();
        want.remove("lost+found");
        let mut got = tree(pod.vol.path());
        got.remove("lost+found");
        assert_eq!(got, want);
        assert!(leftovers(pod.vol.path()).is_empty());
    }

    /// busybox tar takes a stream cut at a member boundary for a whole archive; the
    /// extraction step does not.
    #[test]
    fn a_truncated_stream_is_never_taken_as_complete() {
        let (tar, _) = backup_tar();
        let pod = Pod::new();
        for cut in [512, tar.len() / 2 / 512 * 512, tar.len() - 512] {
            let r = pod.run(
                &Step::Extract {
                    dir: ".",
                    done: DONE,
                    bytes: tar.len() as u64,
                },
                &tar[..cut],
                None,
            );
            assert!(!r.ok, "a stream cut at {cut} of {} passed", tar.len());
            assert!(r.stderr.contains("ended after"), "{}", r.stderr);
        }
        pod.must(
            &Step::Extract {
                dir: ".",
                done: DONE,
                bytes: tar.len() as u64,
            },
            &tar,
        );
    }

    /// Once the watchdog has seen the lease expire, steps that change the volume refuse to
    /// start (and read-only ones still run).
    #[test]
    fn an_expired_lease_stops_every_step_that_changes_the_volume() {
        let pod = Pod::new();
        old_tree(pod.vol.path());
        std::fs::write(pod.run.path().join("pvbackup-expired"), b"").unwrap();
        let keep = vec![];
        let r = pod.run(
            &Step::Begin {
                run_id: ID,
                mode: Mode::Replace,
                keep: &keep,
            },
            b"",
            None,
        );
        assert_eq!(r.code, Some(75), "{}", r.stderr);
        assert!(r.stderr.contains("lease expired"), "{}", r.stderr);
        assert!(leftovers(pod.vol.path()).is_empty());
        assert!(pod.run(&Step::Room { keep: &keep }, b"", None).ok);
    }

    /// The watchdog: renewed, it keeps running; not renewed, it waits for the busy step to
    /// end, then runs its rollback and exits.
    #[test]
    fn the_watchdog_waits_for_busy_steps_then_rolls_back_and_exits() {
        use std::time::{Duration, Instant};
        let pod = Pod::new();
        let (_, run) = pod.paths();
        let marker = pod.run.path().join("rolled-back");
        let mut watchdog = Command::new(busybox())
            .env("PATH", applets())
            .args([
                "sh",
                "-c",
                crate::helper_pod::WATCHDOG,
                "pvbackup-watchdog",
                "2",
            ])
            .arg(&run)
            .args(["touch", marker.to_str().unwrap()])
            .spawn()
            .unwrap();
        let lease = pod.run.path().join(crate::helper_pod::LEASE_FILE);
        // Renewed for 4 s (twice the lease): still running.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(4) {
            std::thread::sleep(Duration::from_millis(300));
            let _ = Command::new(busybox()).arg("touch").arg(&lease).status();
        }
        assert!(
            watchdog.try_wait().unwrap().is_none(),
            "stopped while renewed"
        );
        // A step still running when the lease expires (orphaned, as an exec'd process whose
        // client is gone: nobody here waits for it).
        let out = Command::new(busybox())
            .args(["sh", "-c", "sleep 5 >/dev/null 2>&1 & echo $!"])
            .output()
            .unwrap();
        let busy = String::from_utf8_lossy(&out.stdout).trim().to_string();
        std::fs::write(format!("{run}/pvbackup-busy.{busy}"), b"").unwrap();
        let stopped = Instant::now();
        let st = watchdog.wait().unwrap();
        assert!(st.success());
        assert!(marker.exists(), "the watchdog did not run its rollback");
        assert!(pod.run.path().join("pvbackup-expired").exists());
        assert!(
            !Path::new(&format!("/proc/{busy}")).exists(),
            "the rollback ran while a step was still busy"
        );
        assert!(stopped.elapsed() < Duration::from_secs(12));
    }
}

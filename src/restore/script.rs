//! The cluster-free half of a restore: the shell scripts the helper pod runs (busybox `sh`,
//! `find`, `stat`, `sha256sum`, `readlink`, `mv`), parsing what they print, and comparing a
//! restored tree with the manifest.
//!
//! # Layout on the volume during a restore (`ID` = this run's id)
//!
//! * `/data/.pvbackup-staging-ID`: the archive is extracted here, on the same filesystem, so
//!   the swap is a series of `rename(2)`s.
//! * `/data/.pvbackup-old-ID`: replace mode moves the original top-level entries here; merge
//!   mode moves here the originals it overwrites (at their own relative path).
//! * `/data/.pvbackup-new-ID`: merge mode's journal of paths that did not exist before (one
//!   empty file per path), so a rollback can remove them.
//! * `/data/.pvbackup-swapped-ID`: replace mode's marker "every original is in old/".
//! * `/data/.pvbackup-root-ID`: the volume root's original `mode uid:gid`.
//! * `/data/.pvbackup-direct-ID`: the archive is extracted straight into a volume that held
//!   nothing but an empty `lost+found` (a new PVC): no staging, no swap; a rollback empties
//!   the volume again. Holds `lost+found`'s original `mode uid:gid`, or `none`.
//! * `/data/.pvbackup-extracted-ID`: `tar -x` has ended (see [`EXTRACT`]); the in-pod hashers
//!   wait for it at the latest.
//! * `/data/.pvbackup-journal-ID`: the run's journal, written first ([`BEGIN`]: the mode and
//!   the kept names) and removed last: while it exists the run is unfinished and
//!   [`RECOVER`] rolls it back (a direct restore's volume is emptied again); [`COMMIT`]
//!   removes it first, as its commit point.
//!
//! Every script runs in `/data` as the helper pod's spec mounts it (`$PVB_MOUNT`, set by
//! `step::Step::argv`), and calls `phase NAME` after each phase, so a test can stop it there.
//!
//! Every step is idempotent with [`ROLLBACK`], which puts the originals back from any state
//! the swap can be interrupted in, and [`COMMIT`], which drops them once the restored tree
//! was verified in place.

use std::collections::VecDeque;

use super::table::{Table, TableWriter};
use crate::archive::{canonical_key, EntryKind, EntryRecord, Spool};
use crate::exit::Failure;

pub const MOUNT: &str = "/data";

pub fn staging_name(id: &str) -> String {
    format!(".pvbackup-staging-{id}")
}

/// `sh -c LIST LIST DIR EXCLUDE HOW` (the script is its own `$0`; it is exported as `$PVB` so
/// that it can run itself under `find -exec` — busybox find refuses a `{}` inside an argument).
/// Lists every entry under DIR (DIR itself is `.`); top-level names `.pvbackup-*-EXCLUDE` are
/// skipped. HOW is `hash` (regular files are hashed) or `stat` (they are not). Entries are
/// described in batches of at most [`LIST_BATCH`] paths, so that a batch costs three processes
/// (`stat`, `xargs sha256sum` and a `readlink` per symlink) rather than two per file, and the
/// client parses a batch in memory that does not depend on the pod's ARG_MAX:
///
/// `B\0PATH\0...PATH\0\0`, then one `stat` line `MODE UID GID SIZE INODE MTIME RAWMODE` per
/// path, then for each symlink in order its `readlink` output and `\0`, then `sha256sum`'s
/// output for the regular files in order (HOW = `hash` only). See [`parse_listing`].
pub const LIST: &str = r#"
: "${PVB:=$0}"; export PVB
cd "$1" || exit 1
ex="$2"; how="$3"
batch() {
  printf 'B\0'; printf '%s\0' "$@"; printf '\0'
  stat -c '%a %u %g %s %i %Y %f' -- "$@" || exit 1
  for p; do
    if [ -L "$p" ]; then readlink "$p" || exit 1; printf '\0'; fi
  done
  [ "$how" = hash ] || return 0
  # (growing "$@" one file at a time would be quadratic in the batch size)
  for p; do
    if [ -f "$p" ] && [ ! -L "$p" ]; then printf '%s\0' "$p"; fi
  done | xargs -0 -r sha256sum -- || exit 1
}
if [ "$4" = batch ]; then shift 4; batch "$@"; exit $?; fi
batch .
# One find over every top-level entry but this run's own (a find per entry cost a dozen
# processes for each of a thousand top-level directories).
set --
for e in * .[!.]* ..?*; do
  [ -e "$e" ] || [ -L "$e" ] || continue
  case "$e" in .pvbackup-*-"$ex") continue;; esac
  set -- "$@" "./$e"
done
# Batches of at most LIST_BATCH paths and 128 KiB of arguments, whatever ARG_MAX and the
# environment hold (busybox `find -exec {} +` fills ARG_MAX less a fixed 2 KiB for the
# environment, findutils/find.c `max_argv_len`: with $PVB in it, a large directory failed with
# E2BIG, and find still exited 0).
set -o pipefail
[ $# -eq 0 ] || find "$@" -print0 | xargs -0 -r -n 2048 -s 131072 sh -c 'eval "$PVB"' list . "$ex" "$how" batch || exit 1
"#;

/// The most paths in one batch of [`LIST`]'s output (its `xargs -n`). `find -exec {} +` made
/// batches as large as ARG_MAX allows, about 70,000 short paths, which the client held twice
/// while it parsed one (the raw batch and its entries: 12 MiB of a restore's 21.7 MiB heap peak
/// at 100,000 files), re-parsing the batch from its start as each 64 KiB of it arrived.
pub const LIST_BATCH: usize = 2048;

/// `sh -c SWAP_REPLACE sh ID KEEP...`: moves every original top-level entry (except this
/// run's own and the KEEP names) into old/, then every staged entry into /data, then gives
/// /data the root entry's mode and owner. Prints a line after each phase.
pub const SWAP_REPLACE: &str = r#"
set -e
cd "$PVB_MOUNT"
id="$1"; shift
S=".pvbackup-staging-$id"; O=".pvbackup-old-$id"; M=".pvbackup-swapped-$id"; R=".pvbackup-root-$id"
[ -f ".pvbackup-journal-$id" ]
[ -d "$S" ]
stat -c '%a %u:%g' . > "$R"
mkdir "$O"
for e in * .[!.]* ..?*; do
  [ -e "$e" ] || [ -L "$e" ] || continue
  case "$e" in .pvbackup-*-"$id") continue;; esac
  keep=
  for k; do [ "$e" = "$k" ] && keep=1; done
  [ -n "$keep" ] && continue
  mv -- "$e" "$O/$e"
done
: > "$M"
phase moved-out
for e in "$S"/* "$S"/.[!.]* "$S"/..?*; do
  [ -e "$e" ] || [ -L "$e" ] || continue
  mv -- "$e" ./
done
chown "$(stat -c %u:%g "$S")" .
chmod "$(stat -c %a "$S")" .
rmdir "$S"
phase moved-in
"#;

/// `sh -c SWAP_MERGE SWAP_MERGE ID`: for every staged path, the original (if any) is moved
/// to old/PATH and journaled in swapped/PATH, a path that did not exist is journaled in
/// new/PATH, then the staged entry is renamed into place; directories are merged and get the
/// staged directory's mode and owner.
pub const SWAP_MERGE: &str = r#"
: "${PVB:=$0}"; export PVB
set -e
cd "$PVB_MOUNT"
id="$1"; phase="$2"
S=".pvbackup-staging-$id"; O=".pvbackup-old-$id"; N=".pvbackup-new-$id"; J=".pvbackup-swapped-$id"; R=".pvbackup-root-$id"
aside() {
  mkdir -p "$O/$(dirname "$1")" "$J/$(dirname "$1")"
  : > "$J/$1"
  mv -- "$1" "$O/$1"
}
case "$phase" in
dirs) shift 2
  for d; do
    d="${d#$S/}"
    if [ -L "$d" ] || { [ -e "$d" ] && [ ! -d "$d" ]; }; then aside "$d"; fi
    if [ ! -d "$d" ]; then mkdir -p "$N/$(dirname "$d")"; : > "$N/$d.pvbackup-dir"; mkdir -- "$d"; fi
  done
  exit 0;;
files) shift 2
  for f; do
    f="${f#$S/}"
    if [ -e "$f" ] || [ -L "$f" ]; then aside "$f"
    else mkdir -p "$N/$(dirname "$f")"; : > "$N/$f"
    fi
    mv -- "$S/$f" "$f"
  done
  exit 0;;
meta) shift 2
  for d; do
    t="${d#$S}"; t=".$t"
    chown "$(stat -c %u:%g "$d")" "$t"
    chmod "$(stat -c %a "$d")" "$t"
  done
  exit 0;;
esac
[ -f ".pvbackup-journal-$id" ]
[ -d "$S" ]
stat -c '%a %u:%g' . > "$R"
mkdir "$O" "$N" "$J"
find "$S" -mindepth 1 -type d -exec sh -c 'eval "$PVB"' merge "$id" dirs {} +
phase dirs-merged
find "$S" -mindepth 1 ! -type d -exec sh -c 'eval "$PVB"' merge "$id" files {} +
find "$S" -type d -exec sh -c 'eval "$PVB"' merge "$id" meta {} +
phase moved-in
"#;

/// `sh -c ROLLBACK sh ID MODE KEEP...`: puts the originals back from whatever state the swap
/// was left in (phase `restored`), then removes staging and every journal of this run, the
/// run's journal file last. Safe to run again, from any point it was stopped at.
pub const ROLLBACK: &str = r#"
cd "$PVB_MOUNT" || exit 1
id="$1"; mode="$2"; shift 2
S=".pvbackup-staging-$id"; O=".pvbackup-old-$id"; N=".pvbackup-new-$id"; M=".pvbackup-swapped-$id"; R=".pvbackup-root-$id"; T=".pvbackup-trash-$id"
X=".pvbackup-direct-$id"; D=".pvbackup-extracted-$id"
fail=0
if [ -f "$X" ]; then
  # extracted straight into a volume that held nothing but an empty lost+found: empty it again
  for e in * .[!.]* ..?*; do
    [ -e "$e" ] || [ -L "$e" ] || continue
    case "$e" in .pvbackup-*-"$id"|lost+found) continue;; esac
    rm -rf -- "$e" || fail=1
  done
  lf=$(cat "$X")
  if [ "$lf" = none ]; then
    rm -rf lost+found || fail=1
  elif [ -d lost+found ]; then
    rm -rf lost+found/* lost+found/.[!.]* lost+found/..?* || fail=1
    set -- $lf
    chmod "$1" lost+found; chown "$2" lost+found
  fi
fi
if [ "$mode" = replace ] && [ -d "$O" ]; then
  if [ -e "$M" ]; then
    # every original is in old/: what is at the top level now came from staging
    for e in * .[!.]* ..?*; do
      [ -e "$e" ] || [ -L "$e" ] || continue
      case "$e" in .pvbackup-*-"$id") continue;; esac
      keep=
      for k; do [ "$e" = "$k" ] && keep=1; done
      [ -n "$keep" ] && continue
      rm -rf -- "$e" || exit 1
    done
    # From here on the top level holds originals only: a rollback stopped while moving them
    # back must not take them for restored entries when it runs again.
    rm -f -- "$M" || exit 1
  fi
  for e in "$O"/* "$O"/.[!.]* "$O"/..?*; do
    [ -e "$e" ] || [ -L "$e" ] || continue
    mv -- "$e" ./ || fail=1
  done
fi
if [ "$mode" = merge ] && [ -d "$O" ]; then
  if [ -d "$N" ]; then
    find "$N" ! -type d ! -name '*.pvbackup-dir' -exec sh -c 'n="$1"; shift; for j; do rm -f -- "${j#$n/}"; done' sh "$N" {} + || fail=1
  fi
  if [ -d "$M" ]; then
    find "$M" ! -type d -exec sh -c 'm="$1"; o="$2"; shift 2; for j; do p="${j#$m/}"; if [ -e "$o/$p" ] || [ -L "$o/$p" ]; then rm -rf -- "$p"; mv -- "$o/$p" "$p" || exit 1; fi; done' sh "$M" "$O" {} + || fail=1
  fi
  if [ -d "$N" ]; then
    find "$N" -name '*.pvbackup-dir' -exec sh -c 'n="$1"; shift; for j; do p="${j#$n/}"; rm -rf -- "${p%.pvbackup-dir}"; done' sh "$N" {} + || fail=1
  fi
fi
if [ -f "$R" ] && [ "$fail" = 0 ]; then
  set -- $(cat "$R")
  chmod "$1" . ; chown "$2" .
fi
[ "$fail" = 0 ] || exit 1
phase restored
rm -rf -- "$S" "$O" "$N" "$M" "$R" "$T" "$X" "$D" || exit 1
# last: until it is gone, a later run knows this one is not finished
rm -f -- ".pvbackup-journal-$id"
"#;

/// `sh -c COMMIT sh ID`: the restored tree was verified; drop the originals. Removing the run's
/// journal is the commit point (phase `committed`): from then on nothing rolls the run back,
/// and what is left of it is only deleted. Without a journal there is nothing to commit (the
/// helper pod rolled the run back after its lease expired): exit 3.
pub const COMMIT: &str = r#"
cd "$PVB_MOUNT" || exit 1
id="$1"
O=".pvbackup-old-$id"; T=".pvbackup-trash-$id"; J=".pvbackup-journal-$id"
if [ ! -f "$J" ]; then
  echo "the restore was rolled back in the helper pod (its client did not renew the lease in time), so it cannot be committed" >&2
  exit 3
fi
rm -f -- "$J" || exit 1
phase committed
if [ -d "$O" ]; then mv -- "$O" "$T" || exit 1; fi
rm -rf -- ".pvbackup-staging-$id" ".pvbackup-new-$id" ".pvbackup-swapped-$id" ".pvbackup-root-$id" \
  ".pvbackup-direct-$id" ".pvbackup-extracted-$id" "$T"
"#;

/// `sh -c FIX_SYMLINKS sh DIR UID:GID PATH ...`: busybox tar does not restore the owner of
/// symlinks; `chown -h` does.
pub const FIX_SYMLINKS: &str = r#"
cd "$1" || exit 1
shift
while [ $# -gt 1 ]; do chown -h "$1" "$2" || exit 1; shift 2; done
"#;

/// `sh -c ROOM ROOM KEEP...`: prints `FREE HELD CPUS`, FREE and HELD in KiB: the volume's free
/// space (`df`), and what its content holds (`du`) but the top-level KEEP names — the room a
/// replace in place has once it deleted the content; CPUS the helper's processors (`nproc`). `du` counts a hard-linked file once.
pub const ROOM: &str = r#"
cd "$PVB_MOUNT" || exit 1
# du still prints its total when it could not read everything; an unreadable corner then
# counts as held by nothing, which errs on the side of "no room".
all=$(du -sk . 2>/dev/null | tail -n 1)
held=${all%%[!0-9]*}
[ -n "$held" ] || exit 1
for k; do
  if [ -e "$k" ] && [ ! -L "$k" ]; then
    n=$(du -sk -- "$k" 2>/dev/null | tail -n 1)
    n=${n%%[!0-9]*}
    held=$((held - ${n:-0}))
  fi
done
set -- $(df -Pk . | tail -n 1)
echo "$4 $held $(nproc 2>/dev/null || echo 1)"
"#;

/// `sh -c CLEAR CLEAR KEEP...`: `--in-place`'s first step: deletes every top-level entry of
/// /data but the KEEP names (leftovers of other runs included: afterwards the volume holds
/// exactly the backup).
pub const CLEAR: &str = r#"
cd "$PVB_MOUNT" || exit 1
for e in * .[!.]* ..?*; do
  [ -e "$e" ] || [ -L "$e" ] || continue
  keep=
  for k; do [ "$e" = "$k" ] && keep=1; done
  [ -n "$keep" ] && continue
  rm -rf -- "$e" || exit 1
done
"#;

/// `sh -c BEGIN sh ID MODE KEEP...`: writes the run's journal (MODE, then the KEEP names, a
/// line each), before anything else of the run touches the volume. Stopped: at most an
/// incomplete journal, which [`RECOVER`] treats as a run to roll back.
pub const BEGIN: &str = r#"
cd "$PVB_MOUNT" || exit 1
id="$1"; shift
printf '%s\n' "$@" > ".pvbackup-journal-$id"
"#;

/// `sh -c PREPARE sh ID NEED_KIB WANT`: the first step after [`BEGIN`] that may write. Measures the free
/// space (`df`), and prints `noroom FREE` (KiB) without changing anything when NEED_KIB does not
/// fit. Otherwise, with WANT = `auto` and a volume holding nothing but an empty `lost+found`,
/// it records the root's and `lost+found`'s mode and owner for [`ROLLBACK`] and prints
/// `direct FREE CPUS`: extract straight into the volume. Else it creates the staging directory
/// and prints `staged FREE CPUS`. FREE is `?` when `df` printed nothing readable (the check is
/// then left to `tar`), CPUS the helper's processor count (`nproc`, 1 if it has none). This
/// run's own entries (its journal) do not count as content. Stopped: the records or the
/// staging directory, which the journal written before lets [`ROLLBACK`] remove.
pub const PREPARE: &str = r#"
cd "$PVB_MOUNT" || exit 1
id="$1"; need="$2"; want="$3"
S=".pvbackup-staging-$id"; R=".pvbackup-root-$id"; X=".pvbackup-direct-$id"
set -- $(df -Pk . | tail -n 1)
free="$4"
case "$free" in ''|*[!0-9]*) free='?';; esac
if [ "$free" != '?' ] && [ "$free" -lt "$need" ]; then echo "noroom $free"; exit 0; fi
cpus=$(nproc 2>/dev/null) || cpus=1
empty=1
for e in * .[!.]* ..?*; do
  [ -e "$e" ] || [ -L "$e" ] || continue
  case "$e" in .pvbackup-*-"$id") continue;; esac
  if [ "$e" = lost+found ] && [ -d "$e" ] && [ ! -L "$e" ] && [ -z "$(ls -A "$e")" ]; then continue; fi
  empty=; break
done
if [ "$want" = auto ] && [ -n "$empty" ]; then
  stat -c '%a %u:%g' . > "$R" || exit 1
  if [ -d lost+found ]; then stat -c '%a %u:%g' lost+found; else echo none; fi > "$X" || exit 1
  echo "direct $free $cpus"
else
  mkdir -m 700 "$S" || exit 1
  echo "staged $free $cpus"
fi
"#;

/// `sh -c EXTRACT sh DIR DONE BYTES`: `tar -x` of the tar stream on stdin into DIR, then the
/// marker file DONE (`/data/.pvbackup-extracted-ID`, see [`extracted_marker`]) whatever tar's
/// outcome, so the hashers stop waiting on it; then checks that exactly BYTES arrived: busybox
/// tar takes a stream cut at a header boundary for a complete archive (exit 0), and a client
/// that vanished mid-stream only closes stdin (kubesim README, "exec client gone"). Stopped: a
/// partial DIR, which [`ROLLBACK`] removes (staging, direct) or a re-run replaces (in place).
///
/// The client pads the stream with zeros to a multiple of [`EXTRACT_BLOCK`] ([`padded`]; tar
/// reads the end-of-archive blocks and drains the rest), so `dd iflag=fullblock` counts it in
/// whole blocks: `N+0 records in` for a whole stream, fewer or a partial one for a cut. `dd`
/// passes the stream on in 1 MiB writes; the byte count this replaced (`tee` into a fifo read
/// by `wc -c`) cost busybox 20 s per GiB here, more than the rest of the restore.
pub const EXTRACT: &str = r#"
cd "$PVB_MOUNT" || exit 1
dir="$1"; done="$2"; want="$3"
c="$PVB_RUN/pvbackup-count.$$"
dd bs=1048576 iflag=fullblock 2> "$c" | tar -x --numeric-owner -f - -C "$dir"
rc=$?
: > "$done"
got=$(head -n 1 "$c"); rm -f "$c"
[ "$rc" = 0 ] || exit "$rc"
if [ "$got" != "$((want / 1048576))+0 records in" ]; then
  echo "the archive stream ended after fewer than its $want bytes (dd: $got)" >&2
  exit 1
fi
"#;

/// The block [`EXTRACT`] counts the stream in (its `dd bs=`).
pub const EXTRACT_BLOCK: u64 = 1 << 20;

/// The length of a tar stream of `bytes` padded with zeros for [`EXTRACT`].
pub fn padded(bytes: u64) -> u64 {
    bytes.div_ceil(EXTRACT_BLOCK).max(1) * EXTRACT_BLOCK
}

/// `sh -c RECOVER sh ONLY ROLLBACK`: finishes what earlier runs left on the volume (of run
/// ONLY, or of every run when ONLY is empty): a run with a journal is rolled back with the
/// ROLLBACK script (`rolled-back ID`; `emptied ID` when it was restoring straight into an
/// empty volume, which is empty again), entries of runs without one (committed, or never
/// begun) are deleted (`removed NAME`). Stopped: a re-run finishes it.
pub const RECOVER: &str = r#"
cd "$PVB_MOUNT" || exit 1
only="$1"; rb="$2"
fail=0
for j in .pvbackup-journal-*; do
  [ -f "$j" ] || continue
  id=${j#.pvbackup-journal-}
  [ -z "$only" ] || [ "$id" = "$only" ] || continue
  what=rolled-back
  [ -f ".pvbackup-direct-$id" ] && what=emptied
  if (set -f; IFS='
'; exec sh -c "$rb" sh "$id" $(cat -- "$j")); then
    echo "$what $id"
  else
    fail=1
  fi
done
for e in .pvbackup-*; do
  [ -e "$e" ] || [ -L "$e" ] || continue
  rest=${e#.pvbackup-}; id=${rest#*-}
  [ -z "$only" ] || [ "$id" = "$only" ] || continue
  [ -e ".pvbackup-journal-$id" ] && continue
  rm -rf -- "$e" || { fail=1; continue; }
  echo "removed $e"
done
exit $fail
"#;

/// What [`RECOVER`] did, line by line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// An unfinished run was rolled back: the volume holds what it held before that run.
    RolledBack { run_id: String },
    /// An unfinished run that restored straight into an empty volume was rolled back: the
    /// volume is empty again.
    Emptied { run_id: String },
    /// An entry of a finished (or never begun) run was deleted.
    Removed { name: String },
}

/// Parses [`RECOVER`]'s output (unknown lines are ignored).
pub fn parse_recovered(out: &str) -> Vec<Recovered> {
    out.lines()
        .filter_map(|l| {
            if let Some(id) = l.strip_prefix("rolled-back ") {
                Some(Recovered::RolledBack {
                    run_id: id.to_string(),
                })
            } else if let Some(id) = l.strip_prefix("emptied ") {
                Some(Recovered::Emptied {
                    run_id: id.to_string(),
                })
            } else {
                l.strip_prefix("removed ").map(|n| Recovered::Removed {
                    name: n.to_string(),
                })
            }
        })
        .collect()
}

/// The end-of-extraction marker of run `id` on a volume mounted at `mount`.
pub fn extracted_marker(mount: &str, id: &str) -> String {
    format!("{mount}/.pvbackup-extracted-{id}")
}

/// `sh -c HASH HASH DIR DONE ARGS` with stdin: chunks of `GATE\0FILE\0…` of ARGS arguments
/// each (the last one may be shorter), paths relative to DIR. Hashes the files of each chunk
/// with one `sha256sum` once GATE exists (or DONE, `tar -x` ended): GATE is a regular file or
/// directory that comes after the chunk's last file in the archive, and busybox `tar` writes
/// and closes each member before it creates the next, so every file of the chunk is whole by
/// then. The chunks arrive on stdin while the archive streams ([`HashChunks`]), so the hashing
/// runs while `tar` is still extracting, and several HASH sessions use the node's cores.
/// Chunks are padded with `/dev/null` (hashed too) to ARGS arguments so that `xargs -n` splits
/// them where they were cut; [`HashChunks`] keeps each chunk well below the `-s` limit, which
/// would split too.
pub const HASH: &str = r#"
cd "$1" || exit 1
exec xargs -0 -r -s 131072 -n "$3" sh -c '
d="$1"; g="$2"; shift 2
until [ -e "$g" ] || [ -L "$g" ] || [ -e "$d" ]; do sleep 0.02; done
exec sha256sum -- "$@"' chunk "$2"
"#;

/// Files per [`HASH`] chunk (the gate is one argument more).
pub const HASH_CHUNK_FILES: usize = 128;
/// A chunk closes once its files hold this many bytes, so that a large file is hashed soon after
/// it was written rather than after the next 127 files.
const HASH_CHUNK_BYTES: u64 = 16 << 20;
/// Argument bytes per chunk (each path plus its NUL), well below HASH's `-s 131072`.
const HASH_CHUNK_ARG_BYTES: usize = 48 << 10;
/// The longest path a gate can have (PATH_MAX), reserved in every chunk.
const GATE_MAX: usize = 4096;
/// The padding argument of a short chunk.
const PAD: &[u8] = b"/dev/null";

/// One [`HASH`] chunk for session `shard`: its stdin bytes and the names its `sha256sum` lines
/// will carry, in order (`PAD` included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HashChunk {
    pub shard: usize,
    pub stdin: Vec<u8>,
    pub names: Vec<Vec<u8>>,
}

/// Cuts the regular files of an archive into [`HASH`] chunks as its members stream by, in the
/// archive's order, dealt out to `shards` sessions in turn. Fed with every member before `tar`
/// sees it ([`HashChunks::member`]), a full chunk is closed by the next regular file or
/// directory, which becomes its gate: `tar` creates it only after the chunk's last file is
/// whole. Symlinks and hard links are no gates (busybox `tar` creates them last, so they would
/// hold the chunk back to the end). The archive's order is the one that counts, whatever
/// order the manifest lists its entries in (schema 2 lists them by path).
#[derive(Debug)]
pub struct HashChunks {
    shards: usize,
    next_shard: usize,
    files: Vec<Vec<u8>>,
    bytes: u64,
    arg_bytes: usize,
    /// The chunk is full and waits for its gate.
    full: bool,
}

/// `./` and the canonical path of `e`, as `HASH` gets it.
fn rel(e: &EntryRecord) -> Vec<u8> {
    let mut p = b"./".to_vec();
    p.extend_from_slice(&canonical_key(&e.raw_path()));
    p
}

impl HashChunks {
    /// Chunks for `shards` sessions (at least one), gated by the members of the stream.
    pub fn new(shards: usize) -> HashChunks {
        HashChunks {
            shards: shards.max(1),
            next_shard: 0,
            files: Vec::new(),
            bytes: 0,
            arg_bytes: 0,
            full: false,
        }
    }

    /// The next member of the archive, in archive order, before `tar` sees it: a chunk it
    /// closes as the gate, if any.
    pub fn member(&mut self, e: &EntryRecord) -> Option<HashChunk> {
        let mut closed = None;
        if self.full && matches!(e.kind, EntryKind::File | EntryKind::Dir) {
            closed = Some(self.close(&rel(e)));
        }
        if e.kind == EntryKind::File {
            let p = rel(e);
            self.arg_bytes += p.len() + 1;
            self.bytes += e.size;
            self.files.push(p);
            // room for the gate, the padding and the longest next path
            self.full = self.files.len() == HASH_CHUNK_FILES
                || self.bytes >= HASH_CHUNK_BYTES
                || self.arg_bytes + GATE_MAX + 1 + HASH_CHUNK_FILES * (PAD.len() + 1) + GATE_MAX
                    >= HASH_CHUNK_ARG_BYTES;
        }
        closed
    }

    /// The end of the archive: the last chunk, gated by `done` (the end of the extraction).
    pub fn finish(&mut self, done: &str) -> Option<HashChunk> {
        (!self.files.is_empty()).then(|| self.close(done.as_bytes()))
    }

    fn close(&mut self, gate: &[u8]) -> HashChunk {
        let mut chunk = HashChunk {
            shard: self.next_shard,
            ..Default::default()
        };
        self.next_shard = (self.next_shard + 1) % self.shards;
        chunk.stdin.extend_from_slice(gate);
        chunk.stdin.push(0);
        while self.files.len() < HASH_CHUNK_FILES {
            self.files.push(PAD.to_vec());
        }
        for f in self.files.drain(..) {
            chunk.stdin.extend_from_slice(&f);
            chunk.stdin.push(0);
            chunk.names.push(f);
        }
        self.bytes = 0;
        self.arg_bytes = 0;
        self.full = false;
        chunk
    }
}

/// The chunks of `entries`' regular files, each gated by `done`, for one session: for hashing
/// files again once `tar` has ended.
pub fn hash_after_extraction(entries: &[EntryRecord], done: &str) -> Vec<HashChunk> {
    let mut c = HashChunks::new(1);
    let mut out = Vec::new();
    for e in entries.iter().filter(|e| e.kind == EntryKind::File) {
        c.member(e);
        if c.full {
            out.push(c.close(done.as_bytes()));
        }
    }
    out.extend(c.finish(done));
    out
}

/// Parses the `sha256sum` lines of [`HASH`] sessions as their output arrives: each line
/// names the next of the files sent (in the order they were sent), so the names say where a
/// line ends (busybox prints a name as is, newlines included).
#[derive(Debug, Default)]
pub struct HashParser {
    buf: Vec<u8>,
}

impl HashParser {
    /// Parses what `data` completes; `names` holds the names sent and not yet answered, and
    /// `out` gets the hash of each but the padding, by canonical path.
    pub fn feed(
        &mut self,
        data: &[u8],
        names: &mut VecDeque<Vec<u8>>,
        out: &mut dyn FnMut(Vec<u8>, String) -> Result<(), String>,
    ) -> Result<(), String> {
        self.buf.extend_from_slice(data);
        let mut cur = Cursor {
            out: &self.buf,
            at: 0,
        };
        while !cur.done() {
            let Some(n) = names.front() else {
                return Err("sha256sum printed more lines than there are files".into());
            };
            let at = cur.at;
            match cur.hash_line(n) {
                Ok(h) => {
                    let n = names.pop_front().expect("a front");
                    if n != PAD {
                        out(canonical_key(n.strip_prefix(b"./").unwrap_or(&n)), h)?;
                    }
                }
                Err(Parse::Short) => {
                    cur.at = at;
                    break;
                }
                Err(Parse::Bad(m)) => return Err(m),
            }
        }
        let used = cur.at;
        self.buf.drain(..used);
        Ok(())
    }

    /// The output ended: every name must have had its line.
    pub fn finish(&self, names: &VecDeque<Vec<u8>>) -> Result<(), String> {
        if !self.buf.is_empty() || !names.is_empty() {
            return Err(format!(
                "sha256sum's output ends early ({} files without a hash)",
                names.len()
            ));
        }
        Ok(())
    }
}

/// One entry as the helper pod saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    pub kind: char,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub inode: u64,
    pub mtime: i64,
    /// The canonical path (in a [`Table`], its key, so not stored twice).
    #[serde(skip)]
    pub path: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<Vec<u8>>,
}

/// Parses [`LIST`]'s output as it arrives, batch by batch; `hashed`: it was run with HOW =
/// `hash`.
#[derive(Debug)]
pub struct ListingParser {
    buf: Vec<u8>,
    hashed: bool,
}

impl ListingParser {
    pub fn new(hashed: bool) -> ListingParser {
        ListingParser {
            buf: Vec::new(),
            hashed,
        }
    }

    /// Parses the batches `data` completes; `out` gets every entry.
    pub fn feed(
        &mut self,
        data: &[u8],
        out: &mut dyn FnMut(Seen) -> Result<(), String>,
    ) -> Result<(), String> {
        self.buf.extend_from_slice(data);
        let mut used = 0;
        loop {
            let mut cur = Cursor {
                out: &self.buf,
                at: used,
            };
            if cur.done() {
                break;
            }
            match batch(&mut cur, self.hashed) {
                Ok(seen) => {
                    used = cur.at;
                    for s in seen {
                        out(s)?;
                    }
                }
                Err(Parse::Short) => break,
                Err(Parse::Bad(m)) => return Err(m),
            }
        }
        self.buf.drain(..used);
        Ok(())
    }

    /// The output ended: nothing may be left half-parsed.
    pub fn finish(&self) -> Result<(), String> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err("the listing is truncated".into())
        }
    }
}

/// Parses [`LIST`]'s whole output; `hashed`: it was run with HOW = `hash`.
pub fn parse_listing(out: &[u8], hashed: bool) -> Result<Vec<Seen>, String> {
    let mut p = ListingParser::new(hashed);
    let mut seen = Vec::new();
    p.feed(out, &mut |s| {
        seen.push(s);
        Ok(())
    })?;
    p.finish()?;
    Ok(seen)
}

/// One batch of [`LIST`]'s output.
fn batch(cur: &mut Cursor<'_>, hashed: bool) -> Result<Vec<Seen>, Parse> {
    if cur.field()? != b"B" {
        return Err(Parse::Bad("a batch does not start with its marker".into()));
    }
    let mut paths = Vec::new();
    loop {
        let p = cur.field()?;
        if p.is_empty() {
            break;
        }
        paths.push(p);
    }
    let mut seen = Vec::with_capacity(paths.len());
    for p in &paths {
        let line = String::from_utf8_lossy(cur.until(b'\n')?).into_owned();
        seen.push(stat_line(&line, p).map_err(Parse::Bad)?);
    }
    for s in seen.iter_mut().filter(|s| s.kind == 'L') {
        let t = cur.field()?;
        s.link_target = Some(t.strip_suffix(b"\n").unwrap_or(t).to_vec());
    }
    for (i, s) in seen.iter_mut().enumerate() {
        if hashed && s.kind == 'F' {
            s.sha256 = Some(cur.hash_line(paths[i])?);
        }
    }
    Ok(seen)
}

/// Why output could not be parsed: it stops before the item ends (more may come), or it is
/// wrong.
#[derive(Debug)]
enum Parse {
    Short,
    Bad(String),
}

/// Reads [`LIST`]'s (or [`HASH`]'s) output front to back.
struct Cursor<'a> {
    out: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn done(&self) -> bool {
        self.at >= self.out.len()
    }
    /// Bytes up to (not including) the next `end`, which is consumed.
    fn until(&mut self, end: u8) -> Result<&'a [u8], Parse> {
        let rest = &self.out[self.at..];
        let n = rest.iter().position(|b| *b == end).ok_or(Parse::Short)?;
        self.at += n + 1;
        Ok(&rest[..n])
    }
    fn field(&mut self) -> Result<&'a [u8], Parse> {
        self.until(0)
    }
    /// One line of `sha256sum PATH`: the hash, two separator characters, then the name.
    /// busybox prints the name as is (it may hold newlines, so its length is what counts);
    /// GNU coreutils escapes an odd name and marks the line with a leading backslash.
    fn hash_line(&mut self, path: &[u8]) -> Result<String, Parse> {
        let rest = &self.out[self.at..];
        let escaped = rest.first() == Some(&b'\\');
        let rest = &rest[usize::from(escaped)..];
        let hash = rest.get(..64).ok_or(Parse::Short)?;
        if !hash.iter().all(u8::is_ascii_hexdigit) {
            return Err(Parse::Bad(
                "a sha256sum line does not start with a hash".into(),
            ));
        }
        let hash = String::from_utf8_lossy(hash).into_owned();
        let start = self.at;
        self.at += usize::from(escaped) + 64;
        if escaped {
            if let Err(e) = self.until(b'\n') {
                self.at = start;
                return Err(e);
            }
        } else {
            let line = rest.get(64..64 + 2 + path.len() + 1);
            match line {
                Some(l) if &l[2..2 + path.len()] == path && l.ends_with(b"\n") => {
                    self.at += l.len();
                }
                None if path.starts_with(&rest[(64 + 2).min(rest.len())..]) => {
                    self.at = start;
                    return Err(Parse::Short);
                }
                _ => {
                    return Err(Parse::Bad(format!(
                        "the sha256sum line for {:?} names another file",
                        String::from_utf8_lossy(path)
                    )))
                }
            }
        }
        Ok(hash)
    }
}

/// One line of `stat -c '%a %u %g %s %i %Y %f'` for `path`.
fn stat_line(line: &str, path: &[u8]) -> Result<Seen, String> {
    let bad = || format!("unexpected stat output {line:?}");
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 7 {
        return Err(bad());
    }
    let n = |i: usize| f[i].parse::<u64>().map_err(|_| bad());
    let mode = u32::from_str_radix(f[0], 8).map_err(|_| bad())?;
    let raw = u32::from_str_radix(f[6], 16).map_err(|_| bad())?;
    // S_IFMT and its values, as in stat(2)
    let kind = match raw & 0o170000 {
        0o100000 => 'F',
        0o120000 => 'L',
        0o040000 => 'D',
        _ => 'O',
    };
    Ok(Seen {
        kind,
        mode,
        uid: n(1)?,
        gid: n(2)?,
        size: n(3)?,
        inode: n(4)?,
        mtime: n(5)? as i64,
        path: canonical_key(path.strip_prefix(b"./").unwrap_or(path)),
        sha256: None,
        link_target: None,
    })
}

/// Where [`compare`] gets a regular file's hash: by its path, and what the volume holds there.
pub type HashOf<'a> = dyn FnMut(&[u8], &Seen) -> Result<Option<String>, Failure> + 'a;

/// Problems [`compare`] keeps (a restore shows the first 20).
const PROBLEMS_KEPT: usize = 100;

/// Compares what is on the volume (`seen`, by path) with the manifest's `entries` (in path
/// order), side by side. `exact`: entries the manifest does not list are differences (replace
/// mode, and always in staging). A regular file's content is its hash from `hash_of`, asked
/// for in path order (`None`: not hashed, a difference). Returns one line per difference (the
/// first [`PROBLEMS_KEPT`], then how many more).
pub fn compare(
    entries: &mut dyn Iterator<Item = Result<(Vec<u8>, EntryRecord), Failure>>,
    seen: &Table<Seen>,
    hash_of: &mut HashOf<'_>,
    exact: bool,
) -> Result<Vec<String>, Failure> {
    let reread = |e: std::io::Error| {
        Failure::runtime(format!(
            "reading the volume's listing back from a temporary file failed: {e}"
        ))
    };
    let mut problems = Vec::new();
    let mut more = 0usize;
    let mut problem = |p: String| {
        if problems.len() < PROBLEMS_KEPT {
            problems.push(p);
        } else {
            more += 1;
        }
    };
    let show = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    let mut listing = seen.iter();
    let mut next_seen = || -> Result<Option<Seen>, Failure> {
        Ok(match listing.next().transpose().map_err(reread)? {
            Some((key, mut s)) => {
                s.path = key;
                Some(s)
            }
            None => None,
        })
    };
    let mut have = next_seen()?;
    let mut want = entries.next().transpose()?;
    loop {
        let order = match (&want, &have) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((key, _)), Some(s)) => key.as_slice().cmp(&s.path),
        };
        match order {
            std::cmp::Ordering::Greater => {
                let s = have.take().expect("an entry on the volume");
                if exact && s.path != b"lost+found" {
                    problem(format!("{:?}: not in the backup", show(&s.path)));
                }
                have = next_seen()?;
                continue;
            }
            std::cmp::Ordering::Less => {
                let (_, e) = want.take().expect("a manifest entry");
                problem(format!("{:?}: missing", e.path));
                want = entries.next().transpose()?;
                continue;
            }
            std::cmp::Ordering::Equal => {}
        }
        let (key, e) = want.take().expect("a manifest entry");
        let s = have.take().expect("an entry on the volume");
        // Formatted only when they differ: a restore compares every field of every entry.
        let mut diff =
            |field: &str, same: bool, want: &dyn Fn() -> String, got: &dyn Fn() -> String| {
                if !same {
                    problem(format!(
                        "{:?}: {field} is {}, the backup has {}",
                        e.path,
                        got(),
                        want()
                    ));
                }
            };
        let want_kind = match e.kind {
            EntryKind::File | EntryKind::Hardlink => 'F',
            EntryKind::Dir => 'D',
            EntryKind::Symlink => 'L',
            _ => 'O',
        };
        diff(
            "type",
            s.kind == want_kind,
            &|| want_kind.to_string(),
            &|| s.kind.to_string(),
        );
        if s.kind == want_kind {
            // Modes of symlinks are meaningless on Linux.
            if e.kind != EntryKind::Symlink {
                diff(
                    "mode",
                    s.mode == e.mode,
                    &|| format!("{:04o}", e.mode),
                    &|| format!("{:04o}", s.mode),
                );
            }
            diff(
                "owner",
                (s.uid, s.gid) == (e.uid, e.gid),
                &|| format!("{}:{}", e.uid, e.gid),
                &|| format!("{}:{}", s.uid, s.gid),
            );
            match e.kind {
                EntryKind::File => {
                    diff("size", s.size == e.size, &|| e.size.to_string(), &|| {
                        s.size.to_string()
                    });
                    let got = hash_of(&key, &s)?;
                    diff(
                        "sha256",
                        got.as_deref().unwrap_or_default()
                            == e.sha256.as_deref().unwrap_or_default(),
                        &|| e.sha256.clone().unwrap_or_default(),
                        &|| got.clone().unwrap_or_default(),
                    );
                    diff(
                        "mtime",
                        s.mtime == e.mtime,
                        &|| e.mtime.to_string(),
                        &|| s.mtime.to_string(),
                    );
                }
                EntryKind::Symlink => {
                    let want = e
                        .raw_link_target()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    let got = s.link_target.as_deref().unwrap_or_default();
                    // Compared as bytes, shown escaped (so two targets whose invalid UTF-8
                    // differs never look the same): a target is any bytes but NUL.
                    diff(
                        "link target",
                        want == got,
                        &|| want.escape_ascii().to_string(),
                        &|| got.escape_ascii().to_string(),
                    );
                }
                EntryKind::Hardlink => {
                    let target = e
                        .raw_link_target()
                        .map(|t| canonical_key(&t))
                        .unwrap_or_default();
                    match seen.get(&target).map_err(reread)? {
                        Some((_, t)) if t.inode == s.inode => {}
                        Some(_) => problem(format!(
                            "{:?}: is not a hard link to {:?}",
                            e.path,
                            show(&target)
                        )),
                        None => problem(format!(
                            "{:?}: its hard link target {:?} is missing",
                            e.path,
                            show(&target)
                        )),
                    }
                }
                _ => {}
            }
        }
        want = entries.next().transpose()?;
        have = next_seen()?;
    }
    if more > 0 {
        problems.push(format!("and {more} more differences"));
    }
    Ok(problems)
}

/// Writes a listing, in any order, to a [`Table`] by path (sorted on the way by a
/// [`Spool`]: bounded memory whatever the number of entries).
pub struct ListingTable {
    spool: Spool<Seen>,
}

impl ListingTable {
    pub fn new() -> ListingTable {
        ListingTable {
            spool: Spool::with_budget(super::table::SPOOL_BYTES),
        }
    }

    pub fn push(&mut self, s: Seen) -> std::io::Result<()> {
        self.spool.push(s.path.clone(), &s)
    }

    pub fn finish(self) -> std::io::Result<Table<Seen>> {
        let mut w = TableWriter::new(super::table::READ_IN_ORDER)?;
        for s in self.spool.finish()? {
            let s = s?;
            w.push(&s.key, &s.item)?;
        }
        w.finish()
    }
}

impl Default for ListingTable {
    fn default() -> Self {
        ListingTable::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    #[test]
    fn listing_parses() {
        let h = "ab".repeat(32);
        let out = format!(
            "B\x00.\x00./a b\nc\x00./l\x00./g\x00\x00755 0 0 4096 1 10 41ed\n600 1000 1000 3 2 11 81a4\n777 0 0 3 3 12 a1ff\n644 0 0 1 4 13 81a4\n\
             a b\n\n\x00{h}  ./a b\nc\n\\{h}  ./g\n"
        );
        let s = parse_listing(out.as_bytes(), true).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].path, b".");
        assert_eq!(s[0].kind, 'D');
        assert_eq!(s[1].path, b"a b\nc");
        assert_eq!(s[1].mode, 0o600);
        assert_eq!(s[1].sha256.as_deref(), Some(h.as_str()));
        assert_eq!(s[2].kind, 'L');
        assert_eq!(s[2].link_target.as_deref(), Some(&b"a b\n"[..]));
        assert_eq!(s[3].sha256.as_deref(), Some(h.as_str()));
        // truncated, or a hash line naming a different file
        assert!(parse_listing(&out.as_bytes()[..out.len() - 3], true).is_err());
        assert!(parse_listing(b"B\x00./f\x00\x00600 1 1", true).is_err());
        let wrong = format!("B\x00./f\x00\x00644 0 0 1 4 13 81a4\n{h}  ./x\n");
        assert!(parse_listing(wrong.as_bytes(), true).is_err());
    }

    #[test]
    fn link_targets_compare_as_bytes() {
        let v = serde_json::json!({
            "schema_version": 1, "kind": "PVBackupManifest", "backup_id": "b", "tool_version": "t",
            "created": "2025-01-01T00:00:00Z", "cluster": {"server": "s"}, "namespace": "n",
            "pvc": {"name": "p", "uid": "u"}, "helper_image": "busybox",
            "compression": {"algorithm": "none"},
            "archive": {"file_name": "p.tar", "size": 0, "sha256": "0".repeat(64)},
            "uncompressed_size": 0, "entry_count": 1,
            "entries": [{"path": "l", "kind": "symlink", "size": 0, "mode": 511, "uid": 0,
                         "gid": 0, "mtime": 0, "link_target": "/a\u{fffd}",
                         "link_target_hex": hex::encode(b"/a\xff")}]
        });
        let m = Manifest::from_json(v.to_string().as_bytes()).unwrap();
        let seen = |target: &[u8]| Seen {
            kind: 'L',
            mode: 0o777,
            uid: 0,
            gid: 0,
            size: 0,
            inode: 1,
            mtime: 0,
            path: b"l".to_vec(),
            sha256: None,
            link_target: Some(target.to_vec()),
        };
        assert!(compare_with(&m, vec![seen(b"/a\xff")], true).is_empty());
        let p = compare_with(&m, vec![seen(b"/a\xfe")], true);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("link target is /a\\xfe, the backup has /a\\xff"),
            "{p:?}"
        );
    }

    /// The script against the busybox the helper image runs, on a tree with awkward names.
    #[test]
    fn list_script_runs_in_busybox() {
        let Ok(busybox) = which_busybox() else {
            panic!(
                "busybox is needed for this test (apt-get install busybox-static; .ci/run does)"
            );
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
        std::fs::write(d.join("sub/a\nb"), b"x").unwrap();
        std::fs::write(d.join("sub/deeper/-n"), b"yy").unwrap();
        std::fs::write(d.join("top"), b"").unwrap();
        std::os::unix::fs::symlink("top", d.join("sub/link")).unwrap();
        std::fs::create_dir(d.join(".pvbackup-staging-RUN")).unwrap();
        for i in 0..20_000 {
            std::fs::write(d.join(format!("sub/deeper/f{i:05}")), i.to_string()).unwrap();
        }
        let raw = |how: &str| {
            let out = std::process::Command::new(&busybox)
                .args(["sh", "-c", LIST, LIST])
                .arg(d)
                .args(["RUN", how])
                .env("PATH", busybox_path(&busybox))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        let list = |how: &str| parse_listing(&raw(how), how == "hash").unwrap();
        let seen = list("hash");
        let get = |p: &[u8]| seen.iter().find(|s| s.path == p).unwrap();
        assert_eq!(seen.len(), 20_000 + 7);
        assert_eq!(
            get(b"sub/a\nb").sha256.as_deref(),
            Some(&*hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"x")))
        );
        assert_eq!(get(b"sub/deeper/-n").size, 2);
        assert_eq!(get(b"sub/link").link_target.as_deref(), Some(&b"top"[..]));
        assert_eq!(get(b"sub").kind, 'D');
        assert!(seen.iter().all(|s| !s.path.starts_with(b".pvbackup")));
        // without hashing: the same entries, no hashes
        let stat_only = list("stat");
        assert_eq!(stat_only.len(), seen.len());
        assert!(stat_only.iter().all(|s| s.sha256.is_none()));
        let unhashed = |s: &Seen| Seen {
            sha256: None,
            ..s.clone()
        };
        assert_eq!(stat_only, seen.iter().map(unhashed).collect::<Vec<_>>());
        // Batches of at most LIST_BATCH paths, whatever the pod's ARG_MAX and environment:
        // under a 1 MiB stack limit (ARG_MAX 256 KiB) with 8 KiB of environment, a batch as
        // large as ARG_MAX allows failed with E2BIG and the listing came back short.
        assert!(LIST.contains(&format!("-n {LIST_BATCH} ")));
        let tight = std::process::Command::new(&busybox)
            .args(["sh", "-c", r#"ulimit -s 1024 && exec "$0" "$@""#])
            .arg(&busybox)
            .args(["sh", "-c", LIST, LIST])
            .arg(d)
            .args(["RUN", "stat"])
            .env("PATH", busybox_path(&busybox))
            .env("PVB_ENV_PADDING", "x".repeat(8 << 10))
            .output()
            .unwrap();
        assert!(
            tight.status.success(),
            "{}",
            String::from_utf8_lossy(&tight.stderr)
        );
        assert_eq!(parse_listing(&tight.stdout, false).unwrap(), stat_only);
        let mut cur = Cursor {
            out: &tight.stdout,
            at: 0,
        };
        let mut batches = Vec::new();
        while !cur.done() {
            batches.push(batch(&mut cur, false).unwrap().len());
        }
        assert!(
            batches.len() > seen.len() / LIST_BATCH && batches.iter().all(|n| *n <= LIST_BATCH),
            "batch sizes {batches:?}"
        );
        // Parsed as it arrives, in pieces cut anywhere: the same entries.
        let out = raw("hash");
        for piece in [4093, 1 << 16] {
            let mut p = ListingParser::new(true);
            let mut got = Vec::new();
            for c in out.chunks(piece) {
                p.feed(c, &mut |s| {
                    got.push(s);
                    Ok(())
                })
                .unwrap();
            }
            p.finish().unwrap();
            assert_eq!(got, seen, "in pieces of {piece}");
        }
        let mut p = ListingParser::new(true);
        p.feed(&out[..out.len() - 3], &mut |_| Ok(())).unwrap();
        assert!(p.finish().is_err(), "a cut listing is refused");
        // By path in a table, whatever the order they came in.
        let t = table_of(seen.clone());
        assert_eq!(t.len(), seen.len() as u64);
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        let back: Vec<Seen> = t
            .iter()
            .map(|r| {
                let (k, mut s) = r.unwrap();
                s.path = k;
                s
            })
            .collect();
        assert_eq!(back, sorted);
    }

    /// `seen` in a [`Table`] by path.
    fn table_of(seen: Vec<Seen>) -> Table<Seen> {
        let mut t = ListingTable::new();
        for s in seen {
            t.push(s).unwrap();
        }
        t.finish().unwrap()
    }

    /// [`compare`] of `seen` with `m`'s entries, hashes from the listing itself.
    fn compare_with(m: &Manifest, seen: Vec<Seen>, exact: bool) -> Vec<String> {
        let mut entries: Vec<(Vec<u8>, EntryRecord)> = m
            .entries
            .iter()
            .map(|e| (canonical_key(&e.raw_path()), e.clone()))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        compare(
            &mut entries.into_iter().map(Ok),
            &table_of(seen),
            &mut |_, s| Ok(s.sha256.clone()),
            exact,
        )
        .unwrap()
    }

    #[test]
    fn compare_reports_each_difference_side_by_side() {
        let e = |path: &str, kind: EntryKind, target: Option<&str>| EntryRecord {
            kind,
            link_target: target.map(str::to_string),
            sha256: (kind == EntryKind::File).then(|| "ab".repeat(32)),
            ..file(path, 0)
        };
        let v = serde_json::json!({
            "schema_version": 1, "kind": "PVBackupManifest", "backup_id": "b", "tool_version": "t",
            "created": "2025-01-01T00:00:00Z", "cluster": {"server": "s"}, "namespace": "n",
            "pvc": {"name": "p", "uid": "u"}, "helper_image": "busybox",
            "compression": {"algorithm": "none"},
            "archive": {"file_name": "p.tar", "size": 0, "sha256": "0".repeat(64)},
            "uncompressed_size": 0, "entry_count": 5,
            "entries": [e(".", EntryKind::Dir, None), e("z", EntryKind::File, None),
                        e("a", EntryKind::Hardlink, Some("z")), e("b", EntryKind::File, None),
                        e("gone", EntryKind::File, None)]
        });
        let m = Manifest::from_json(v.to_string().as_bytes()).unwrap();
        let s = |path: &str, kind: char, inode: u64| Seen {
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            inode,
            mtime: 0,
            path: path.as_bytes().to_vec(),
            sha256: (kind == 'F').then(|| "ab".repeat(32)),
            link_target: None,
        };
        let good = vec![
            s("z", 'F', 7),
            s(".", 'D', 1),
            s("b", 'F', 8),
            s("a", 'F', 7),
            s("gone", 'F', 9),
        ];
        assert_eq!(compare_with(&m, good.clone(), true), Vec::<String>::new());
        let mut bad = good.clone();
        bad[3].inode = 10; // "a" no longer a link to "z"
        bad[2].sha256 = Some("cd".repeat(32)); // "b" changed
        bad.remove(4); // "gone" missing
        bad.push(s("extra", 'F', 11));
        bad.push(s("lost+found", 'D', 12));
        let p = compare_with(&m, bad.clone(), true);
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].contains("\"a\": is not a hard link to \"z\""), "{p:?}");
        assert!(p[1].contains("\"b\": sha256 is cdcd"), "{p:?}");
        assert!(p[2].contains("\"extra\": not in the backup"), "{p:?}");
        assert!(p[3].contains("\"gone\": missing"), "{p:?}");
        // Not exact (a merge in place): what the backup does not list is fine.
        assert_eq!(compare_with(&m, bad, false).len(), 3);
    }

    fn file(path: &str, size: u64) -> EntryRecord {
        EntryRecord {
            path: path.into(),
            path_hex: None,
            kind: EntryKind::File,
            size,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            link_target: None,
            link_target_hex: None,
            sha256: None,
        }
    }

    /// Every member of `entries` fed in order, then the end: the chunks, each with the index
    /// of the member that closed it (`entries.len()` for the end).
    fn chunks_of(entries: &[EntryRecord], shards: usize, done: &str) -> Vec<(usize, HashChunk)> {
        let mut c = HashChunks::new(shards);
        let mut out: Vec<(usize, HashChunk)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            out.extend(c.member(e).map(|k| (i, k)));
        }
        out.extend(c.finish(done).map(|k| (entries.len(), k)));
        out
    }

    /// The arguments of a chunk's stdin: its gate, then its names.
    fn args(chunk: &HashChunk) -> Vec<&[u8]> {
        chunk
            .stdin
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .collect()
    }

    #[test]
    fn hash_chunks_are_gated_by_a_later_file_or_directory_of_the_stream() {
        let mut entries = vec![EntryRecord {
            kind: EntryKind::Dir,
            ..file(".", 0)
        }];
        for i in 0..300 {
            entries.push(file(&format!("f{i:03}"), 10));
            if i == 200 {
                entries.push(EntryRecord {
                    kind: EntryKind::Symlink,
                    link_target: Some("f000".into()),
                    ..file("a-link", 0)
                });
                entries.push(EntryRecord {
                    kind: EntryKind::Dir,
                    ..file("sub", 0)
                });
            }
        }
        entries.insert(5, file("big", 40 << 20));
        entries.push(EntryRecord {
            kind: EntryKind::Symlink,
            link_target: Some("f000".into()),
            ..file("z-link", 0)
        });
        let done = "/data/.pvbackup-extracted-X";
        let chunks = chunks_of(&entries, 2, done);
        let mut files: Vec<Vec<u8>> = Vec::new();
        for (n, (at, chunk)) in chunks.iter().enumerate() {
            // Dealt out in turn; gate + HASH_CHUNK_FILES names each.
            assert_eq!(chunk.shard, n % 2);
            let a = args(chunk);
            assert_eq!(a.len(), HASH_CHUNK_FILES + 1);
            assert_eq!(
                a[1..],
                chunk.names.iter().map(Vec::as_slice).collect::<Vec<_>>()[..]
            );
            // The gate is the member that closed the chunk, a file or a directory after every
            // file of the chunk in the stream, or the end of the extraction.
            match entries.get(*at) {
                Some(g) => {
                    assert!(matches!(g.kind, EntryKind::File | EntryKind::Dir), "{g:?}");
                    assert_eq!(a[0], rel(g));
                    for f in chunk.names.iter().filter(|f| *f != PAD) {
                        let i = entries.iter().position(|e| rel(e) == *f).unwrap();
                        assert!(i < *at, "{f:?} is after its gate");
                    }
                }
                None => assert_eq!(a[0], done.as_bytes()),
            }
            // No chunk reaches xargs' size limit.
            assert!(a.iter().map(|x| x.len() + 1).sum::<usize>() < HASH_CHUNK_ARG_BYTES);
            files.extend(chunk.names.iter().filter(|n| *n != PAD).cloned());
        }
        files.sort();
        assert_eq!(files.len(), 301);
        assert!(files.windows(2).all(|w| w[0] != w[1]));
        // "big" closes its chunk (16 MiB), gated by the file after it; a full chunk followed
        // by a symlink waits for the directory after it; the last chunk for the end.
        let gates: Vec<&[u8]> = chunks.iter().map(|(_, c)| args(c)[0]).collect();
        assert!(gates.contains(&&b"./f004"[..]), "{gates:?}");
        assert!(!gates.contains(&&b"./a-link"[..]), "{gates:?}");
        assert!(!gates.contains(&&b"./z-link"[..]), "{gates:?}");
        assert_eq!(gates.last(), Some(&done.as_bytes()));
        // Hashing again after the extraction: every chunk waits for the end.
        let again = hash_after_extraction(&entries, "/done");
        assert_eq!(
            again
                .iter()
                .map(|c| c.names.iter().filter(|n| *n != PAD).count())
                .sum::<usize>(),
            301
        );
        assert!(again.iter().all(|c| args(c)[0] == b"/done"));
    }

    /// HASH in busybox while a slow writer creates the files in archive order, each in two
    /// halves with a pause between, and the chunks reach the sessions as the restore sends them
    /// (before `tar` sees the member that closes them): every hash must be of the whole file,
    /// so no chunk may be hashed before its gate exists.
    #[test]
    fn hash_script_hashes_each_file_whole_while_it_is_written() {
        use std::io::Write;
        let busybox = which_busybox().expect("busybox (apt-get install busybox-static)");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let done = d.join(".done");
        let mut entries = Vec::new();
        for i in 0..400 {
            let size = if i % 97 == 0 { 3 << 20 } else { 100 + i as u64 };
            entries.push(file(&format!("f{i:03} odd\nname"), size));
        }
        let mut sessions: Vec<_> = (0..2)
            .map(|_| {
                std::process::Command::new(&busybox)
                    .args(["sh", "-c", HASH, HASH])
                    .arg(&d)
                    .arg(&done)
                    .arg((HASH_CHUNK_FILES + 1).to_string())
                    .env("PATH", busybox_path(&busybox))
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let stdins: Vec<_> = sessions
            .iter_mut()
            .map(|c| c.stdin.take().unwrap())
            .collect();
        let writer = {
            let (d, done, entries) = (d.clone(), done.clone(), entries.clone());
            std::thread::spawn(move || {
                let mut stdins = stdins;
                let mut names = vec![Vec::new(); 2];
                let mut chunks = HashChunks::new(2);
                let mut send = |c: HashChunk, stdins: &mut Vec<std::process::ChildStdin>| {
                    stdins[c.shard].write_all(&c.stdin).unwrap();
                    names[c.shard].extend(c.names);
                };
                for (i, e) in entries.iter().enumerate() {
                    if let Some(c) = chunks.member(e) {
                        send(c, &mut stdins);
                    }
                    let body: Vec<u8> = (0..e.size).map(|j| (i as u64 + j) as u8).collect();
                    let mut f = std::fs::File::create(d.join(&e.path)).unwrap();
                    let half = body.len() / 2;
                    f.write_all(&body[..half]).unwrap();
                    f.flush().unwrap();
                    if i % 50 == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(30));
                    }
                    f.write_all(&body[half..]).unwrap();
                }
                if let Some(c) = chunks.finish(done.to_str().unwrap()) {
                    send(c, &mut stdins);
                }
                std::fs::write(done, b"").unwrap();
                drop(stdins);
                names
            })
        };
        let outs: Vec<_> = sessions
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let names = writer.join().unwrap();
        // Parsed as the output arrives, in pieces cut anywhere.
        let parse = |out: &[u8], names: &[Vec<u8>], piece: usize| {
            let mut names: VecDeque<Vec<u8>> = names.iter().cloned().collect();
            let mut p = HashParser::default();
            let mut got = Vec::new();
            for c in out.chunks(piece) {
                p.feed(c, &mut names, &mut |k, h| {
                    got.push((k, h));
                    Ok(())
                })?;
            }
            p.finish(&names)?;
            Ok::<_, String>(got)
        };
        let mut got = std::collections::HashMap::new();
        for (out, names) in outs.iter().zip(&names) {
            assert!(out.status.success());
            let whole = parse(&out.stdout, names, usize::MAX).unwrap();
            assert_eq!(parse(&out.stdout, names, 5).unwrap(), whole);
            got.extend(whole);
        }
        assert_eq!(got.len(), entries.len());
        for e in &entries {
            let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                std::fs::read(d.join(&e.path)).unwrap(),
            ));
            assert_eq!(got[e.path.as_bytes()], want, "{:?}", e.path);
        }
        // Output that ends early, or names another file, is refused.
        assert!(parse(b"", &names[0], 1).is_err());
        let mut other = names[0].clone();
        other.rotate_left(1);
        assert!(parse(&outs[0].stdout, &other, 64).is_err());
    }

    /// PREPARE in busybox: an empty volume (an empty `lost+found` at most) goes direct and
    /// records the root's and `lost+found`'s mode and owner; anything else gets a staging
    /// directory; a backup that does not fit changes nothing.
    #[test]
    fn prepare_script_chooses_direct_staged_or_no_room() {
        use std::os::unix::fs::PermissionsExt;
        let busybox = which_busybox().expect("busybox (apt-get install busybox-static)");
        let prepare = |mount: &std::path::Path, need_kib: u64, want: &str| {
            let out = std::process::Command::new(&busybox)
                .args(["sh", "-c", PREPARE, "sh"])
                .args(["RUN", &need_kib.to_string(), want])
                .env("PVB_MOUNT", mount)
                .env("PATH", busybox_path(&busybox))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let names = |d: &std::path::Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("lost+found")).unwrap();
        std::fs::set_permissions(d.join("lost+found"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        // Too big: nothing is created.
        assert!(prepare(d, 1 << 50, "auto").starts_with("noroom "));
        assert_eq!(names(d), ["lost+found"]);
        // Empty but for this run's journal (BEGIN comes first): direct, with the records
        // ROLLBACK needs.
        std::fs::write(d.join(".pvbackup-journal-RUN"), b"replace\n").unwrap();
        let out = prepare(d, 1, "auto");
        assert!(out.starts_with("direct "), "{out}");
        assert_eq!(out.split_whitespace().count(), 3, "{out}");
        let lf = std::fs::metadata(d.join("lost+found")).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join(".pvbackup-direct-RUN")).unwrap(),
            format!(
                "700 {}:{}\n",
                std::os::unix::fs::MetadataExt::uid(&lf),
                std::os::unix::fs::MetadataExt::gid(&lf)
            )
        );
        assert!(d.join(".pvbackup-root-RUN").is_file());
        // Staging asked for, or a volume with content: a staging directory.
        let other = tempfile::tempdir().unwrap();
        assert!(prepare(other.path(), 1, "stage").starts_with("staged "));
        assert!(other.path().join(".pvbackup-staging-RUN").is_dir());
        let full = tempfile::tempdir().unwrap();
        std::fs::create_dir(full.path().join("lost+found")).unwrap();
        std::fs::write(full.path().join("lost+found/#12"), b"x").unwrap();
        assert!(prepare(full.path(), 1, "auto").starts_with("staged "));
        assert_eq!(names(full.path()), [".pvbackup-staging-RUN", "lost+found"]);
    }

    fn which_busybox() -> Result<std::path::PathBuf, ()> {
        std::env::var_os("PATH")
            .and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("busybox"))
                    .find(|b| b.exists())
            })
            .ok_or(())
    }

    /// A directory of busybox applet links, so the script runs busybox's tools, not the host's.
    fn busybox_path(busybox: &std::path::Path) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pvb-busybox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for applet in [
            "sh",
            "stat",
            "sha256sum",
            "readlink",
            "find",
            "printf",
            "[",
            "xargs",
            "sleep",
            "df",
            "tail",
            "nproc",
            "ls",
            "mkdir",
        ] {
            let _ = std::os::unix::fs::symlink(busybox, dir.join(applet));
        }
        dir
    }
}

//! `kubectl pvbackup inspect`: a manifest's summary, and with `--files` its entries.
//!
//! A schema-2 backup's entries are never held in memory: they stream from the destination
//! (through the decryptor for an encrypted backup), checked whole before anything is printed,
//! then read again to print them. The table needs its column widths before its first row:
//! kubectl aligns a table over all its rows too (its `tabwriter` holds them until the end),
//! so a fixed-width layout would print a different table than every other of ours; a first
//! pass measures, a second prints, and the table is the one it always was.

use std::ops::ControlFlow;

use crate::archive::{canonical_key, EntryRecord, LinkRef, SortedProblem, SortedRules, Spool};
use crate::cli::OutputFormat;
use crate::destination::StoreOptions;
use crate::exit::Failure;
use crate::locate::{entries_failure, locate_open, Located};
use crate::manifest::{EntryNote, EntryReader, Manifest, ManifestError};
use crate::output::{self, Columns, Stdout};

const COLUMNS: [&str; 6] = ["type", "mode", "owner", "size", "path", "link"];

pub fn run(
    backup: &str,
    from: Option<&str>,
    store: &StoreOptions,
    files: bool,
    keys: Option<&crate::encryption::Identities>,
    format: OutputFormat,
) -> Result<(), Failure> {
    if !files && keys.is_none() {
        let (dest, mkey) = crate::locate::resolve(backup, from, store)?;
        if let Some(header) = crate::locate::encrypted_header(dest.as_ref(), &mkey) {
            return header_only(dest.as_ref(), &mkey, &header, format);
        }
    }
    // A schema-1 (or expanded) manifest holds its entries and was checked whole as it was
    // parsed; a schema-2 one's stream from `reader`.
    let (loc, reader) = locate_open(backup, from, store, keys)?;
    let mut stream = reader.map(|first| Stream {
        loc: &loc,
        file: first.file_name().to_string(),
        first: Some(first),
    });
    // Every entry checked (the first pass) before anything is printed.
    let table = files && !matches!(format, OutputFormat::Json | OutputFormat::Yaml);
    let mut columns = Columns::new(&COLUMNS);
    let mut notes = 0u64;
    if let Some(s) = &mut stream {
        s.check(|e, note| {
            if table {
                columns.fit(&row(e));
            }
            notes += u64::from(note.is_some());
        })?;
    }
    let m = &loc.manifest;
    if let Some(warning) = crate::manifest::skipped_warning(&m.skipped) {
        eprintln!("{warning}");
    }
    match format {
        OutputFormat::Json | OutputFormat::Yaml => match (files, stream) {
            (true, Some(mut s)) => {
                let mut out = Stdout::new();
                structured_streamed(format, m, notes > 0, &mut s, &mut |t| out.write(t))?;
                out.finish()
            }
            (true, None) => output::structured(format, m),
            (false, _) => {
                let mut v = serde_json::to_value(m).map_err(|e| Failure::runtime(e.to_string()))?;
                if let Some(o) = v.as_object_mut() {
                    o.remove("entries");
                    o.remove("entry_notes");
                }
                output::structured(format, &v)
            }
        },
        _ => {
            let text = summary(&loc);
            if !files {
                return output::print_stdout(&text);
            }
            // As `output::table` lays it out: the header, and a line a row.
            let mut out = Stdout::new();
            let mut more = out.write(&text)?;
            match stream {
                Some(mut s) => {
                    if more && out.write(&format!("\n{}", columns.header()))? {
                        s.each(&mut |e, _| {
                            next(out.write(&format!("\n{}", columns.row(&row(&e))))?)
                        })?;
                    }
                }
                None => {
                    for e in &m.entries {
                        columns.fit(&row(e));
                    }
                    more = more && out.write(&format!("\n{}", columns.header()))?;
                    for e in &m.entries {
                        if !more {
                            break;
                        }
                        more = out.write(&format!("\n{}", columns.row(&row(e))))?;
                    }
                }
            }
            out.write("\n")?;
            out.finish()
        }
    }
}

/// The human summary of a located backup.
fn summary(loc: &Located) -> String {
    let m = &loc.manifest;
    let pods: Vec<String> = m
        .source_pods
        .iter()
        .map(|p| {
            format!(
                "{}{}",
                p.name,
                p.mesh
                    .as_ref()
                    .map(|x| format!(" ({x})"))
                    .unwrap_or_default()
            )
        })
        .collect();
    let mut text = format!(
        "Backup:        {}\nCreated:       {}{}\nCluster:       {}{}\nPVC:           {}/{} (uid {})\nCapacity:      {}\nAccess modes:  {}\nStorage class: {}\nSource pods:   {}\nHelper image:  {}\nArchive:       {} ({}, {}, sha256 {})\nData:          {} in {} entries\n",
        m.backup_id,
        m.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        m.cluster
            .created_by
            .as_ref()
            .map(|u| format!(" by {u}"))
            .unwrap_or_default(),
        m.cluster.server,
        m.cluster.context.as_ref().map(|c| format!(" (context {c})")).unwrap_or_default(),
        m.namespace,
        m.pvc.name,
        m.pvc.uid,
        m.pvc.capacity.clone().unwrap_or_else(|| "-".into()),
        m.pvc.access_modes.join(","),
        m.pvc.storage_class.clone().unwrap_or_else(|| "-".into()),
        if pods.is_empty() { "-".into() } else { pods.join(", ") },
        m.helper_image,
        loc.destination.locate(&loc.archive_key),
        m.compression.algorithm(),
        output::human_bytes(m.archive.size),
        m.archive.sha256,
        output::human_bytes(m.uncompressed_size),
        m.entry_count,
    );
    if m.schema_version != crate::manifest::SCHEMA_VERSION {
        text.push_str(&format!(
            "Schema:        version {} (written by {})\n",
            m.schema_version, m.tool_version
        ));
    }
    if let Some(c) = &m.consistency {
        text.push_str(&format!(
            "Consistency:   {}{}\n",
            serde_json::to_value(c.method)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            c.snapshot
                .as_ref()
                .map(|s| format!(
                    " (VolumeSnapshot {}{}{})",
                    s.name,
                    s.class
                        .as_ref()
                        .map(|c| format!(", class {c}"))
                        .unwrap_or_default(),
                    s.cut_time
                        .map(|t| format!(
                            ", cut {}",
                            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        ))
                        .unwrap_or_default()
                ))
                .unwrap_or_default()
        ));
        if c.files_changed_while_read > 0 {
            text.push_str(&format!(
                "               {} file(s) changed while they were read; this copy may be inconsistent\n",
                c.files_changed_while_read
            ));
        }
        // The manifest's words (`pre`, `succeeded`), not Rust's.
        let word = |v: serde_json::Result<serde_json::Value>| {
            v.ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        };
        for h in &c.hooks {
            text.push_str(&format!(
                "Hook:          {} in {}/{}: {} ({})\n",
                word(serde_json::to_value(h.phase)),
                h.pod,
                h.container,
                h.command.join(" "),
                word(serde_json::to_value(h.outcome))
            ));
        }
    }
    if let (Some(e), Some(s)) = (&m.encryption, &loc.sealed) {
        text.push_str(&format!(
            "Encrypted:     age ({}); stored {} with sha256 {}\n",
            crate::encryption::kinds_text(&e.recipients),
            output::human_bytes(s.stored.size),
            s.stored.sha256
        ));
    }
    if let Some(p) = &m.parent {
        text.push_str(&format!("Parent:        {}\n", p.backup_id));
    }
    if !m.skipped.is_empty() {
        text.push_str(&format!(
            "Not backed up: {} (a restore will not recreate them)\n",
            m.skipped
                .iter()
                .map(|s| format!("{} ({})", s.path, s.reason))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    text
}

/// An entry's cells in the `--files` table.
fn row(e: &EntryRecord) -> [String; 6] {
    [
        format!("{:?}", e.kind).to_lowercase(),
        format!("{:04o}", e.mode & 0o7777),
        format!("{}:{}", e.uid, e.gid),
        e.size.to_string(),
        e.path.clone(),
        e.link_target
            .as_ref()
            .map(|t| format!("-> {t}"))
            .unwrap_or_default(),
    ]
}

/// Go on with the next entry while stdout takes more.
fn next(more: bool) -> Result<ControlFlow<()>, Failure> {
    Ok(if more {
        ControlFlow::Continue(())
    } else {
        ControlFlow::Break(())
    })
}

/// A schema-2 backup's entries, read from its destination as many times as the output needs.
struct Stream<'a> {
    loc: &'a Located,
    /// The entries stream's file name, for errors.
    file: String,
    /// The reader [`locate_open`] gave, for the first pass.
    first: Option<EntryReader<'static>>,
}

/// What reads a backup's entries, in path order, as often as asked: [`Stream`] (and lists
/// in the tests).
trait Entries {
    /// Gives every entry to `each` until it breaks.
    fn each(&mut self, each: &mut Each) -> Result<(), Failure>;
}

type Each<'a> = dyn FnMut(EntryRecord, Option<EntryNote>) -> Result<ControlFlow<()>, Failure> + 'a;

impl Entries for Stream<'_> {
    /// A read to the end is checked whole ([`EntryReader`]): damage, an unsafe entry or wrong
    /// counts fail.
    fn each(&mut self, each: &mut Each) -> Result<(), Failure> {
        let reader = match self.first.take() {
            Some(r) => r,
            None => self.loc.reopen_entries()?,
        };
        for line in reader {
            let (e, note) = line.map_err(|err| entries_failure(self.loc, &self.file, err))?;
            if each(e, note)?.is_break() {
                break;
            }
        }
        Ok(())
    }
}

impl Stream<'_> {
    /// The first pass: every entry read and checked, as [`crate::manifest::load`] checks a
    /// whole manifest. A hard link's target must be a non-directory entry other than itself,
    /// which needs the entries after the link too: the links are spooled by target (on disk
    /// past a budget) and met in one more pass, only if there are any ([`SortedRules`]).
    fn check(
        &mut self,
        mut each: impl FnMut(&EntryRecord, Option<&EntryNote>),
    ) -> Result<(), Failure> {
        let tmp = |e: std::io::Error| {
            Failure::runtime(format!(
                "keeping the manifest's hard links in a temporary file failed: {e}; check that the temporary directory (TMPDIR, else /tmp) has free space, then retry"
            ))
        };
        let mut links: Spool<LinkRef> = Spool::default();
        self.each(&mut |e, note| {
            each(&e, note.as_ref());
            if let Some((target, link)) = LinkRef::of(&e, 0) {
                links.push(target, &link).map_err(tmp)?;
            }
            Ok(ControlFlow::Continue(()))
        })?;
        if links.is_empty() {
            return Ok(());
        }
        let mut rules = SortedRules::new(links.finish().map_err(tmp)?, false);
        let mut problem = None;
        self.each(&mut |e, _| {
            let key = canonical_key(&e.raw_path());
            Ok(match rules.check(&key, 0, &e) {
                Ok(()) => ControlFlow::Continue(()),
                Err(p) => {
                    problem = Some(p);
                    ControlFlow::Break(())
                }
            })
        })?;
        let refused = match problem.map_or_else(|| rules.finish().err(), Some) {
            None => return Ok(()),
            Some(SortedProblem::Io(e)) => return Err(tmp(e)),
            Some(SortedProblem::Unsafe(source)) => ManifestError::Unsafe { source },
            Some(SortedProblem::Duplicate(d)) => ManifestError::DuplicatePath { path: d.path },
        };
        Err(entries_failure(self.loc, &self.file, refused))
    }
}

/// `inspect --files -o json|yaml` of a schema-2 backup: what [`output::structured`] prints
/// for the whole manifest, byte for byte, written as the entries are read (and their notes,
/// if `notes`, in one more pass). The manifest without entries is rendered, and the lists
/// are written where its empty `entries` list is: a top-level field, the only one whose line
/// is `  "entries": []` (JSON, indented two spaces; a newline inside a value is escaped) or
/// `entries: []` (YAML, unindented; a value's lines are indented); `entry_notes` follows it.
fn structured_streamed(
    format: OutputFormat,
    m: &Manifest,
    notes: bool,
    entries: &mut dyn Entries,
    write: &mut dyn FnMut(&str) -> Result<bool, Failure>,
) -> Result<(), Failure> {
    let doc = output::rendered(format, m)?;
    let marker = match format {
        OutputFormat::Yaml => "\nentries: []\n",
        _ => "\n  \"entries\": []",
    };
    let at = doc.find(marker).ok_or_else(|| {
        Failure::runtime("cannot render the manifest: its entries list is not where expected")
    })?;
    let mut list = List::new(format);
    // The newline before `entries` ends the previous line (JSON) or starts this one (YAML).
    if !write(&doc[..at + usize::from(format == OutputFormat::Yaml)])? {
        return Ok(());
    }
    let mut more = write(&list.open("entries"))?;
    if more {
        entries.each(&mut |e, _| {
            more = write(&list.item(&e)?)?;
            next(more)
        })?;
    }
    if more && notes {
        more = write(&list.close())? && write(&list.open("entry_notes"))?;
        if more {
            entries.each(&mut |_, note| match note {
                Some(n) => {
                    more = write(&list.item(&n)?)?;
                    next(more)
                }
                None => Ok(ControlFlow::Continue(())),
            })?;
        }
    }
    if more && write(&list.close())? {
        write(&doc[at + marker.len()..])?;
    }
    Ok(())
}

/// A top-level list of a manifest written an item at a time, as serde_json's pretty printer
/// and serde_yaml write it inside the whole document.
struct List {
    format: OutputFormat,
    items: u64,
    lists: u64,
}

impl List {
    fn new(format: OutputFormat) -> List {
        List {
            format,
            items: 0,
            lists: 0,
        }
    }

    fn open(&mut self, name: &str) -> String {
        self.items = 0;
        self.lists += 1;
        let comma = if self.lists > 1 { "," } else { "" };
        match self.format {
            OutputFormat::Yaml => format!("{name}:"),
            _ => format!("{comma}\n  \"{name}\": ["),
        }
    }

    fn item<T: serde::Serialize>(&mut self, value: &T) -> Result<String, Failure> {
        self.items += 1;
        Ok(match self.format {
            // One item of a top-level (unindented) sequence, as in the document.
            OutputFormat::Yaml => {
                let text = output::rendered(self.format, std::slice::from_ref(&value))?;
                if self.items == 1 {
                    format!("\n{text}")
                } else {
                    text
                }
            }
            // An item two levels deep: every line indented four spaces more.
            _ => {
                let text = output::rendered(self.format, value)?;
                let text = text.trim_end_matches('\n').replace('\n', "\n    ");
                let sep = if self.items == 1 { "" } else { "," };
                format!("{sep}\n    {text}")
            }
        })
    }

    fn close(&self) -> String {
        match (self.format, self.items) {
            (OutputFormat::Yaml, 0) => " []\n".into(),
            (OutputFormat::Yaml, _) => String::new(),
            (_, 0) => "]".into(),
            (_, _) => "\n  ]".into(),
        }
    }
}

/// An encrypted backup without its key: what its header says (id, namespace, PVC, time,
/// sizes, the stored objects, the kinds of recipients), and that the rest is encrypted.
fn header_only(
    dest: &dyn crate::destination::Destination,
    mkey: &str,
    h: &crate::manifest::Header,
    format: OutputFormat,
) -> Result<(), Failure> {
    let kinds = h
        .encryption
        .as_ref()
        .map(|e| crate::encryption::kinds_text(&e.recipients))
        .unwrap_or_default();
    match format {
        OutputFormat::Json | OutputFormat::Yaml => output::structured(format, h),
        _ => {
            let dir = mkey
                .rsplit_once('/')
                .map(|(d, _)| format!("{d}/"))
                .unwrap_or_default();
            output::print_stdout(&format!(
                "Backup:        {}\nCreated:       {}\nPVC:           {}/{}\nArchive:       {} ({}, {} stored, sha256 {})\nData:          {} in {} entries ({} files, {})\nEncrypted:     age ({kinds})\n               The cluster, the PVC's spec and labels, the pods and every path are encrypted: pass --identity FILE to see them\n",
                h.backup_id,
                h.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                h.namespace,
                h.pvc_name,
                dest.locate(&format!("{dir}{}", h.archive.file_name)),
                h.compression.algorithm(),
                output::human_bytes(h.archive.size),
                h.archive.sha256,
                output::human_bytes(h.uncompressed_size),
                h.entry_count,
                h.file_count,
                output::human_bytes(h.file_bytes),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::local::LocalDir;

    /// Entries from a list, as often as asked.
    struct Listed(Vec<(EntryRecord, Option<EntryNote>)>);

    impl Entries for Listed {
        fn each(&mut self, each: &mut Each) -> Result<(), Failure> {
            for (e, n) in self.0.clone() {
                if each(e, n)?.is_break() {
                    break;
                }
            }
            Ok(())
        }
    }

    /// `m` stored as schema 2, read back as `inspect --files` reads it: the manifest without
    /// its entries, and the entries with their notes; and whole, as `load` reads it.
    fn stored(m: &Manifest) -> (Manifest, Listed, Manifest) {
        let d = tempfile::tempdir().unwrap();
        let dest = LocalDir::new(d.path().to_path_buf());
        let key = "id/shop/data-web-0.manifest.json";
        crate::manifest::store(&dest, key, m).unwrap();
        let (head, reader) = crate::manifest::open(&dest, key).unwrap();
        let listed = reader.unwrap().map(Result::unwrap).collect();
        let whole = crate::manifest::load(&dest, key).unwrap();
        (head, Listed(listed), whole)
    }

    #[test]
    fn streamed_json_and_yaml_are_what_the_whole_manifest_prints() {
        use crate::manifest::tests::{full, sample};
        let mut none = sample();
        none.entries.clear();
        none.entry_count = 0;
        // With notes and every section, without notes, and without entries.
        for m in [full(), sample(), none] {
            let (head, mut listed, whole) = stored(&m);
            let notes = listed.0.iter().any(|(_, n)| n.is_some());
            assert_eq!(notes, !whole.entry_notes.is_empty());
            for format in [OutputFormat::Json, OutputFormat::Yaml] {
                let mut text = String::new();
                structured_streamed(format, &head, notes, &mut listed, &mut |t| {
                    text.push_str(t);
                    Ok(true)
                })
                .unwrap();
                assert_eq!(
                    text,
                    output::rendered(format, &whole).unwrap(),
                    "{format:?}"
                );
            }
        }
    }

    #[test]
    fn a_closed_stdout_ends_the_streamed_output() {
        let (head, mut listed, _) = stored(&crate::manifest::tests::full());
        let mut writes = 0;
        structured_streamed(OutputFormat::Json, &head, true, &mut listed, &mut |_| {
            writes += 1;
            Ok(writes < 3)
        })
        .unwrap();
        assert_eq!(writes, 3, "nothing is written once stdout is closed");
    }
}

//! A local directory. Objects are written to `.<name>.partial-<random>` beside their final
//! name, fsync'd, then renamed, so a crash never leaves a file that looks complete.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Destination, DestinationError, ObjectWriter};

pub struct LocalDir {
    root: PathBuf,
    /// Temporary files of writers not yet committed or dropped.
    in_flight: Arc<Mutex<HashSet<PathBuf>>>,
}

impl LocalDir {
    pub fn new(root: PathBuf) -> Self {
        LocalDir {
            root,
            in_flight: Arc::default(),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DestinationError + 'a {
    move |source| DestinationError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

struct LocalWriter {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<BufWriter<File>>,
    in_flight: Arc<Mutex<HashSet<PathBuf>>>,
}

impl LocalWriter {
    fn forget(&self) {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.tmp);
    }
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("written after commit").write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("flushed after commit").flush()
    }
}

impl ObjectWriter for LocalWriter {
    fn commit(mut self: Box<Self>) -> Result<(), DestinationError> {
        let file = self.file.take().expect("committed once");
        let file = file.into_inner().map_err(|e| DestinationError::Io {
            action: "write",
            path: self.tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io("sync", &self.tmp))?;
        fs::rename(&self.tmp, &self.dest).map_err(io("rename into place", &self.dest))?;
        self.forget();
        // The rename is durable only once the directory entry is.
        if let Some(dir) = self.dest.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Not committed: remove the partial file so nothing half-written stays behind.
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
            self.forget();
        }
    }
}

impl Destination for LocalDir {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, DestinationError> {
        let dest = self.path(key);
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.partial-{:08x}", rand::random::<u32>()));
        let file = File::create(&tmp).map_err(io("create", &tmp))?;
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tmp.clone());
        Ok(Box::new(LocalWriter {
            tmp,
            dest,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            in_flight: self.in_flight.clone(),
        }))
    }

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, DestinationError> {
        let p = self.path(key);
        match File::open(&p) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DestinationError::NotFound {
                what: "backup file".into(),
                path: p.display().to_string(),
            }),
            Err(e) => Err(DestinationError::Io {
                action: "open",
                path: p,
                source: e,
            }),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, DestinationError> {
        let mut out = Vec::new();
        let start = self.path(prefix);
        if !self.root.exists() {
            return Err(DestinationError::NotFound {
                what: "destination directory".into(),
                path: self.root.display().to_string(),
            });
        }
        let mut stack = vec![if start.is_dir() {
            start
        } else {
            self.root.clone()
        }];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).map_err(io("list", &dir))? {
                let entry = entry.map_err(io("list", &dir))?;
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&self.root) {
                    let key = rel.to_string_lossy().replace('\\', "/");
                    if key.starts_with(prefix) {
                        out.push(key);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn locate(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }

    fn abort_incomplete(&self) {
        for tmp in self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            let _ = fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_writes_leave_nothing() {
        let d = tempfile::tempdir().unwrap();
        let dest = LocalDir::new(d.path().to_path_buf());
        {
            let mut w = dest.create("id/ns/a.tar").unwrap();
            w.write_all(b"partial").unwrap();
        }
        assert!(
            dest.list("").unwrap().is_empty(),
            "a dropped writer must not leave a file"
        );
        let mut w = dest.create("id/ns/a.tar").unwrap();
        w.write_all(b"whole").unwrap();
        w.commit().unwrap();
        assert_eq!(dest.list("").unwrap(), vec!["id/ns/a.tar".to_string()]);
        let mut s = String::new();
        dest.open("id/ns/a.tar")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "whole");
    }
}

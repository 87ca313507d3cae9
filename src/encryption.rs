//! Client-side encryption with age (<https://age-encryption.org/v1>).
//!
//! `create --encrypt-to` seals every object of a backup that leaks content: the archive, the
//! entries stream, and the header's `details` (cluster, PVC labels, pods, skipped paths), which
//! move into `<pvc>.details.json.age`. The header keeps what `list` needs (id, namespace, PVC,
//! time, sizes, the kinds of recipients) and the size and sha256 of every **stored**
//! (encrypted) object, so the bytes at the destination can be checked without a key.
//!
//! The layers are plain `Read`/`Write` adapters composed in the data path, memory flat:
//!
//! * writing: tar → compression → [`Recipients::seal`] (age's streaming writer) → hashing of
//!   the stored bytes → destination;
//! * reading: destination → [`Identities::open`] (hashes the stored bytes and checks them at
//!   the end, then age's streaming reader, which authenticates every 64 KiB chunk and the end
//!   of the stream) → decompression → tar.
//!
//! Decryption happens only here, in the client: a restore's helper pod gets plaintext tar over
//! the exec stream, and no key is ever sent to the cluster.

use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::destination::{Destination, DestinationError};
use crate::manifest::{
    ArchiveInfo, Consistency, Details, EncryptedPart, Encryption, EncryptionScheme, Header,
    LoadError, Manifest, RecipientKind, StoredObject, MANIFEST_SUFFIX,
};

/// Suffix of every encrypted object's key.
pub const AGE_SUFFIX: &str = ".age";
/// Suffix of the encrypted `details` object's key (`<pvc>.details.json.age`).
pub const DETAILS_SUFFIX: &str = ".details.json.age";

/// Encryption or decryption that cannot go ahead.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("--encrypt-to {value:?}: {detail}. Pass an age X25519 recipient (`age1…`, from `age-keygen -y KEYFILE`) or an SSH public key (`ssh-ed25519 AAAA…` or `ssh-rsa AAAA…`, a line of ~/.ssh/id_ed25519.pub)")]
    BadRecipient { value: String, detail: String },
    #[error("recipients file {file}: {detail}. It takes one recipient per line (`age1…`, `ssh-ed25519 …`, `ssh-rsa …`); empty lines and lines starting with `#` are ignored")]
    BadRecipientsFile { file: String, detail: String },
    #[error("identity file {file}: {detail}. Pass an age identity file (`age-keygen -o key.txt`) or an unencrypted OpenSSH private key (~/.ssh/id_ed25519)")]
    BadIdentityFile { file: String, detail: String },
    #[error("the backup is encrypted (age: {}) and no identity was given, so nothing was read or touched; pass --identity FILE (or set PVBACKUP_IDENTITY_FILE) with the private key of one of its recipients", kinds_text(.kinds))]
    NoIdentity { kinds: Vec<RecipientKind> },
    #[error("none of the identities in {} can decrypt this backup, which was encrypted to {} recipient(s) (age: {}); nothing was touched. Pass the private key of one of those recipients with --identity", .files.join(", "), .count, kinds_text(.kinds))]
    WrongIdentity {
        files: Vec<String>,
        kinds: Vec<RecipientKind>,
        count: usize,
    },
    #[error("{object} is damaged: {detail}. The backup cannot be trusted; use another backup")]
    Damaged { object: String, detail: String },
    #[error("reading {object} failed: {source}")]
    Read {
        object: String,
        #[source]
        source: io::Error,
    },
}

/// `x25519, ssh-ed25519`: how `list`, `inspect` and errors name the recipient kinds.
pub fn kinds_text(kinds: &[RecipientKind]) -> String {
    kinds
        .iter()
        .map(|k| match k {
            RecipientKind::X25519 => "x25519",
            RecipientKind::SshEd25519 => "ssh-ed25519",
            RecipientKind::SshRsa => "ssh-rsa",
            RecipientKind::Passphrase => "passphrase",
            RecipientKind::Plugin => "plugin",
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The recipients of `create --encrypt-to`/`--encrypt-to-file`, parsed and checked before the
/// first API call. Kept as text (re-parsed per object), so that it is `Send + Sync` and
/// cheap to share between the backups of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipients {
    keys: Vec<String>,
    kinds: Vec<RecipientKind>,
}

// age 0.13 marks SSH recipients deprecated (not post-quantum); they are what the issue asks for
// and what `age -R ~/.ssh/id_ed25519.pub` accepts.
#[allow(deprecated)]
fn parse_recipient(s: &str) -> Result<(Box<dyn age::Recipient + Send>, RecipientKind), String> {
    if s.starts_with("age1") {
        return s
            .parse::<age::x25519::Recipient>()
            .map(|r| (Box::new(r) as Box<dyn age::Recipient + Send>, RecipientKind::X25519))
            .map_err(|e| format!("not a valid age X25519 recipient ({e}); age plugin and post-quantum recipients are not supported"));
    }
    if s.starts_with("ssh-") {
        use age::ssh::{ParseRecipientKeyError as E, Recipient as R};
        return match s.parse::<R>() {
            Ok(r @ R::SshEd25519(..)) => Ok((Box::new(r), RecipientKind::SshEd25519)),
            Ok(r @ R::SshRsa(..)) => Ok((Box::new(r), RecipientKind::SshRsa)),
            Err(E::Unsupported(kind)) => {
                Err(format!("SSH key type {kind} is not supported by age"))
            }
            Err(E::RsaModulusTooSmall) => Err("the ssh-rsa key is shorter than 2048 bits".into()),
            Err(E::RsaModulusTooLarge) => Err("the ssh-rsa key is longer than age supports".into()),
            Err(_) => Err("not a valid SSH public key".into()),
        };
    }
    Err("not a recipient age accepts".into())
}

impl Recipients {
    /// The recipients named on the command line and in recipients files (age's `-R` format);
    /// `None` when there are none (the backup is not encrypted).
    pub fn parse(
        values: &[String],
        files: &[PathBuf],
    ) -> Result<Option<Recipients>, EncryptionError> {
        let mut keys = Vec::new();
        for v in values {
            let v = v.trim();
            parse_recipient(v).map_err(|detail| EncryptionError::BadRecipient {
                value: v.to_string(),
                detail,
            })?;
            keys.push(v.to_string());
        }
        for f in files {
            let bad = |detail: String| EncryptionError::BadRecipientsFile {
                file: f.display().to_string(),
                detail,
            };
            let text = std::fs::read_to_string(f).map_err(|e| bad(e.to_string()))?;
            let before = keys.len();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                parse_recipient(line).map_err(|d| bad(format!("line {}: {d}", n + 1)))?;
                keys.push(line.to_string());
            }
            if keys.len() == before {
                return Err(bad("it names no recipient".into()));
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        let mut kinds = Vec::new();
        for k in &keys {
            let kind = parse_recipient(k).expect("checked").1;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        Ok(Some(Recipients { keys, kinds }))
    }

    /// The recipients as given (public keys), e.g. to hand to a scheduled `create`.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The kinds of the recipients, each once, in the order first named.
    pub fn kinds(&self) -> &[RecipientKind] {
        &self.kinds
    }

    /// Wraps `out` in age's streaming encryptor; [`age::stream::StreamWriter::finish`] it
    /// (dropping it loses the last chunk, and the object does not decrypt).
    pub fn seal<W: Write>(&self, out: W) -> io::Result<age::stream::StreamWriter<W>> {
        let parsed: Vec<Box<dyn age::Recipient + Send>> = self
            .keys
            .iter()
            .map(|k| parse_recipient(k).expect("checked").0)
            .collect();
        age::Encryptor::with_recipients(parsed.iter().map(|r| r.as_ref() as &dyn age::Recipient))
            .map_err(|e| io::Error::other(format!("age: {e}")))?
            .wrap_output(out)
    }
}

/// The identities of `--identity FILE` (age identity files or OpenSSH private keys), loaded
/// before the first API call. Cheap to clone.
#[derive(Clone)]
pub struct Identities {
    keys: Arc<Vec<Box<dyn age::Identity + Send + Sync>>>,
    files: Vec<String>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({:?})", self.files)
    }
}

impl Identities {
    /// Loads the identity files; `None` when none is given.
    pub fn load(files: &[PathBuf]) -> Result<Option<Identities>, EncryptionError> {
        if files.is_empty() {
            return Ok(None);
        }
        let mut keys: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
        for f in files {
            keys.extend(load_identity_file(f)?);
        }
        Ok(Some(Identities {
            keys: Arc::new(keys),
            files: files.iter().map(|f| f.display().to_string()).collect(),
        }))
    }

    /// Decrypts the stored object `stored` (named `object` in errors), whose stored bytes must
    /// be `expected.size` bytes with sha256 `expected.sha256`: checked when the plaintext has
    /// been read to its end, which then yields a [`Damaged`] error instead of the end.
    pub fn open<R: Read + Send + 'static>(
        &self,
        stored: R,
        object: &str,
        expected: &StoredObject,
        kinds: &[RecipientKind],
    ) -> Result<Plaintext, EncryptionError> {
        let shared = Arc::new(Mutex::new(StoredState {
            inner: Box::new(stored),
            hasher: Sha256::new(),
            count: 0,
            failed: false,
        }));
        let handle = StoredHandle(shared.clone());
        let damaged = |detail: String| EncryptionError::Damaged {
            object: object.to_string(),
            detail,
        };
        let source_failed = |e: io::Error| -> Option<EncryptionError> {
            shared
                .lock()
                .expect("not poisoned")
                .failed
                .then(|| EncryptionError::Read {
                    object: object.to_string(),
                    source: e,
                })
        };
        let decryptor = match age::Decryptor::new(handle) {
            Ok(d) => d,
            Err(age::DecryptError::Io(e)) => {
                return Err(source_failed(io::Error::new(e.kind(), e.to_string()))
                    .unwrap_or_else(|| damaged(format!("its age header cannot be read ({e})"))))
            }
            Err(e) => return Err(damaged(format!("it is not an age file ({e})"))),
        };
        let reader =
            match decryptor.decrypt(self.keys.iter().map(|k| k.as_ref() as &dyn age::Identity)) {
                Ok(r) => r,
                Err(age::DecryptError::NoMatchingKeys) => {
                    return Err(EncryptionError::WrongIdentity {
                        files: self.files.clone(),
                        kinds: kinds.to_vec(),
                        count: kinds.len().max(1),
                    })
                }
                Err(e) => return Err(damaged(format!("its age header does not check out ({e})"))),
            };
        Ok(Plaintext {
            reader: Box::new(reader),
            stored: shared,
            object: object.to_string(),
            expected: expected.clone(),
            ended: false,
        })
    }
}

#[allow(deprecated)]
fn load_identity_file(
    f: &Path,
) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, EncryptionError> {
    let file = f.display().to_string();
    let bad = |detail: String| EncryptionError::BadIdentityFile {
        file: file.clone(),
        detail,
    };
    let text = std::fs::read(f).map_err(|e| bad(e.to_string()))?;
    // age's `-i` convention: an SSH private key file, or an age identity file.
    if text.starts_with(b"-----BEGIN") {
        return match age::ssh::Identity::from_buffer(&text[..], Some(file.clone()))
            .map_err(|e| bad(e.to_string()))?
        {
            i @ age::ssh::Identity::Unencrypted(_) => Ok(vec![Box::new(i)]),
            age::ssh::Identity::Encrypted(_) => Err(bad("the SSH key is passphrase-protected, which kubectl-pvbackup cannot prompt for; use an unprotected copy (`cp KEY COPY && ssh-keygen -p -N '' -f COPY`) kept as safely as the original".into())),
            age::ssh::Identity::Unsupported(_) => Err(bad("age does not support this SSH key type".into())),
        };
    }
    let parsed = age::IdentityFile::from_buffer(BufReader::new(&text[..]))
        .map_err(|e| bad(e.to_string()))?
        .into_identities()
        .map_err(|e| bad(e.to_string()))?;
    if parsed.is_empty() {
        return Err(bad("it holds no identity".into()));
    }
    Ok(parsed)
}

/// The stored bytes under age's reader: hashed and counted; `failed` says that the error age
/// passed on came from the destination (not a damaged object).
struct StoredState {
    inner: Box<dyn Read + Send>,
    hasher: Sha256,
    count: u64,
    failed: bool,
}

struct StoredHandle(Arc<Mutex<StoredState>>);

impl Read for StoredHandle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.0.lock().expect("not poisoned");
        match s.inner.read(buf) {
            Ok(n) => {
                s.hasher.update(&buf[..n]);
                s.count += n as u64;
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    s.failed = true;
                }
                Err(e)
            }
        }
    }
}

/// A damaged encrypted object, as the `io::Error` a [`Plaintext`] read returns: see
/// [`damage`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Damaged(pub String);

/// The damage an I/O error reports, when it is a [`Plaintext`]'s (a flipped byte, a cut
/// object, a stored sha256 that differs), as opposed to a failing destination.
pub fn damage(e: &io::Error) -> Option<&Damaged> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Damaged>())
}

/// The plaintext of an encrypted object (see [`Identities::open`]).
pub struct Plaintext {
    reader: Box<dyn Read + Send>,
    stored: Arc<Mutex<StoredState>>,
    object: String,
    expected: StoredObject,
    ended: bool,
}

impl Plaintext {
    fn damaged(&self, detail: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            Damaged(format!("{} is damaged: {detail}", self.object)),
        )
    }

    /// At the plaintext's end: the rest of the stored bytes (age stops after its last
    /// chunk), then their size and sha256 against the header's.
    fn check_end(&mut self) -> io::Result<()> {
        let mut s = self.stored.lock().expect("not poisoned");
        let mut buf = [0u8; 8192];
        loop {
            match s.inner.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    s.hasher.update(&buf[..n]);
                    s.count += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let sha = hex::encode(s.hasher.clone().finalize());
        let count = s.count;
        drop(s);
        if count != self.expected.size || sha != self.expected.sha256 {
            return Err(self.damaged(format!(
                "the stored object is {count} bytes with sha256 {sha}, the manifest says {} bytes with sha256 {}",
                self.expected.size, self.expected.sha256
            )));
        }
        Ok(())
    }
}

impl Read for Plaintext {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ended || buf.is_empty() {
            return Ok(0);
        }
        match self.reader.read(buf) {
            Ok(0) => {
                self.check_end()?;
                self.ended = true;
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) if damage(&e).is_some() => Err(e),
            Err(e) => {
                if self.stored.lock().expect("not poisoned").failed {
                    Err(e)
                } else {
                    // age authenticates every chunk and the end of the stream: anything it
                    // refuses was changed or cut after it was written.
                    Err(self.damaged(format!("age refused it ({e})")))
                }
            }
        }
    }
}

/// What `<pvc>.details.json.age` holds: the header's `details`, and the size and sha256 of
/// the archive and the entries stream **before** encryption (compressed), which the checks
/// of `verify` and `restore` compare the decrypted streams with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedDetails {
    pub details: Details,
    /// The header's `consistency` (hook commands, pod and snapshot names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    pub archive: ArchiveInfo,
    pub entries: PlainObject,
}

/// Size and sha256 of an object's plaintext (compressed, not encrypted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlainObject {
    pub size: u64,
    pub sha256: String,
}

impl SealedDetails {
    /// Encrypts these details into `out`; returns `out` and the stored size and sha256.
    pub fn seal<W: Write>(&self, recipients: &Recipients, out: W) -> io::Result<(W, u64, String)> {
        let mut w = recipients.seal(crate::archive::HashingWriter::new(out))?;
        serde_json::to_writer(&mut w, self)?;
        let (out, sha, size) = w.finish()?.into_parts();
        Ok((out, size, sha))
    }

    /// Decrypts and parses a stored details object.
    pub fn open<R: Read + Send + 'static>(
        keys: &Identities,
        stored: R,
        object: &str,
        expected: &StoredObject,
        kinds: &[RecipientKind],
    ) -> Result<SealedDetails, EncryptionError> {
        let mut plain = keys.open(stored, object, expected, kinds)?;
        let mut bytes = Vec::new();
        plain
            .read_to_end(&mut bytes)
            .map_err(|e| match damage(&e) {
                Some(d) => EncryptionError::Damaged {
                    object: object.to_string(),
                    detail: d.0.clone(),
                },
                None => EncryptionError::Read {
                    object: object.to_string(),
                    source: e,
                },
            })?;
        serde_json::from_slice(&bytes).map_err(|e| EncryptionError::Damaged {
            object: object.to_string(),
            detail: format!("it decrypts, but not to the details of a backup ({e})"),
        })
    }
}

/// How `create` stores an encrypted backup's manifest ([`crate::manifest::store_with`]).
pub struct Seal {
    pub recipients: Recipients,
    /// The stored (encrypted) archive, as written.
    pub archive: ArchiveInfo,
}

/// A sealing writer over `W`: age's encryptor over a hash of the stored bytes.
pub(crate) type Sealed<W> = age::stream::StreamWriter<crate::archive::HashingWriter<W>>;

impl Seal {
    /// Writes the entries stream through `write` into `out`: `write` gets the plaintext
    /// writer (age's encryptor, under a hash of the plaintext), writes the compressed stream
    /// and returns it; `io_error` names a failing write. Returns `out`, the stored size and
    /// sha256, the plaintext's, and what `write` returned besides.
    pub(crate) fn entries<W: Write, T, E>(
        &self,
        out: W,
        io_error: impl Fn(io::Error) -> E,
        write: impl FnOnce(
            crate::archive::HashingWriter<Sealed<W>>,
        ) -> Result<(crate::archive::HashingWriter<Sealed<W>>, T), E>,
    ) -> Result<(W, u64, String, PlainObject, T), E> {
        let sealed = self
            .recipients
            .seal(crate::archive::HashingWriter::new(out))
            .map_err(&io_error)?;
        let (plain, t) = write(crate::archive::HashingWriter::new(sealed))?;
        let (sealed, sha256, size) = plain.into_parts();
        let (out, stored_sha, stored_size) = sealed.finish().map_err(&io_error)?.into_parts();
        Ok((
            out,
            stored_size,
            stored_sha,
            PlainObject { size, sha256 },
            t,
        ))
    }

    /// Moves the header's details (and consistency) into `<pvc>.details.json.age`, with the
    /// archive's and the entries stream's plaintext size and sha256, and makes the header say
    /// what is encrypted and where.
    pub fn details(
        &self,
        dest: &dyn Destination,
        dir: &str,
        manifest_key: &str,
        m: &Manifest,
        header: &mut Header,
        entries: PlainObject,
    ) -> Result<(), DestinationError> {
        let sealed = SealedDetails {
            details: header.details.take().expect("a new header has details"),
            consistency: header.consistency.take(),
            archive: m.archive.clone(),
            entries,
        };
        let name = manifest_key.rsplit('/').next().unwrap_or(manifest_key);
        let stem = name.strip_suffix(MANIFEST_SUFFIX).unwrap_or(name);
        let file_name = format!("{stem}{DETAILS_SUFFIX}");
        let key = format!("{dir}{file_name}");
        let w = dest.create(&key)?;
        let (w, size, sha256) =
            sealed
                .seal(&self.recipients, w)
                .map_err(|source| DestinationError::Io {
                    action: "write",
                    path: PathBuf::from(dest.locate(&key)),
                    source,
                })?;
        w.commit()?;
        header.archive = self.archive.clone();
        header.encryption = Some(Encryption {
            scheme: EncryptionScheme::Age,
            recipients: self.recipients.kinds().to_vec(),
            parts: vec![
                EncryptedPart::Archive,
                EncryptedPart::Entries,
                EncryptedPart::Details,
            ],
            details: Some(StoredObject {
                file_name,
                size,
                sha256,
            }),
        });
        Ok(())
    }
}

/// Decrypts an encrypted header's details object (in `dir`, next to it) with `keys`; returns
/// the header as [`Header::read_entries`] needs it (details back, the entries stream's and the
/// archive's plaintext size and sha256), the stored entries stream, and the stored archive.
pub fn unseal_header(
    dest: &dyn Destination,
    dir: &str,
    mut header: Header,
    e: &Encryption,
    keys: &Identities,
) -> Result<(Header, (StoredObject, ArchiveInfo)), LoadError> {
    let object = e.details.clone().expect("validated");
    let key = format!("{dir}{}", object.file_name);
    let reader = dest.open(&key).map_err(|err| match err {
        DestinationError::NotFound { .. } => LoadError::NoEntries {
            location: dest.locate(&key),
        },
        other => LoadError::Destination(other),
    })?;
    let sealed = SealedDetails::open(keys, reader, &dest.locate(&key), &object, &e.recipients)?;
    let damaged = |detail: String| EncryptionError::Damaged {
        object: dest.locate(&key),
        detail,
    };
    if sealed.details.pvc.name != header.pvc_name {
        return Err(damaged(format!(
            "it is for PVC {:?}, the header for {:?}: it belongs to another backup",
            sealed.details.pvc.name, header.pvc_name
        ))
        .into());
    }
    let stored_entries = StoredObject {
        file_name: header.entries.file_name.clone(),
        size: header.entries.size,
        sha256: header.entries.sha256.clone(),
    };
    let stored_archive = std::mem::replace(&mut header.archive, sealed.archive);
    header.entries.size = sealed.entries.size;
    header.entries.sha256 = sealed.entries.sha256;
    header.details = Some(sealed.details);
    header.consistency = sealed.consistency;
    Ok((header, (stored_entries, stored_archive)))
}

/// One stored object of an encrypted backup, checked against its header without a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredCheck {
    /// `archive`, `entries` or `details`.
    pub part: &'static str,
    pub location: String,
    pub bytes: u64,
    /// What is wrong; `None` when the stored size and sha256 are the header's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Hashes the stored archive, entries stream and details object of the encrypted `header`
/// (at `manifest_key`) and compares them with what the header says: the integrity check that
/// needs no key. It cannot tell whether the plaintext inside is what was backed up.
pub fn check_stored(
    dest: &dyn Destination,
    manifest_key: &str,
    header: &Header,
) -> Result<Vec<StoredCheck>, DestinationError> {
    let dir = manifest_key
        .rsplit_once('/')
        .map(|(d, _)| format!("{d}/"))
        .unwrap_or_default();
    let mut parts = vec![
        (
            "archive",
            StoredObject {
                file_name: header.archive.file_name.clone(),
                size: header.archive.size,
                sha256: header.archive.sha256.clone(),
            },
        ),
        (
            "entries",
            StoredObject {
                file_name: header.entries.file_name.clone(),
                size: header.entries.size,
                sha256: header.entries.sha256.clone(),
            },
        ),
    ];
    if let Some(d) = header.encryption.as_ref().and_then(|e| e.details.clone()) {
        parts.push(("details", d));
    }
    let mut out = Vec::new();
    for (part, o) in parts {
        let key = format!("{dir}{}", o.file_name);
        let location = dest.locate(&key);
        let reader = match dest.open(&key) {
            Ok(r) => r,
            Err(DestinationError::NotFound { .. }) => {
                out.push(StoredCheck {
                    part,
                    location,
                    bytes: 0,
                    problem: Some("missing (the header names it)".into()),
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut sink = crate::archive::HashingWriter::new(io::sink());
        io::copy(&mut BufReader::with_capacity(1 << 20, reader), &mut sink).map_err(|source| {
            DestinationError::Io {
                action: "read",
                path: PathBuf::from(&location),
                source,
            }
        })?;
        let (_, sha, bytes) = sink.into_parts();
        let problem = (bytes != o.size || sha != o.sha256).then(|| {
            format!(
                "stored as {bytes} bytes with sha256 {sha}, the header says {} bytes with sha256 {}: modified or damaged",
                o.size, o.sha256
            )
        });
        out.push(StoredCheck {
            part,
            location,
            bytes,
            problem,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    #[allow(deprecated)]
    fn key(dir: &Path, name: &str) -> (PathBuf, String) {
        let id = age::x25519::Identity::generate();
        let path = dir.join(name);
        std::fs::write(&path, format!("{}\n", id.to_string().expose_secret())).unwrap();
        (path, id.to_public().to_string())
    }

    /// `plain` sealed to `recipients`: (stored bytes, what the header records of them).
    fn sealed(recipients: &Recipients, plain: &[u8]) -> (Vec<u8>, StoredObject) {
        let mut w = recipients
            .seal(crate::archive::HashingWriter::new(Vec::new()))
            .unwrap();
        w.write_all(plain).unwrap();
        let (bytes, sha256, size) = w.finish().unwrap().into_parts();
        let o = StoredObject {
            file_name: "x.age".into(),
            size,
            sha256,
        };
        (bytes, o)
    }

    fn read(keys: &Identities, stored: Vec<u8>, o: &StoredObject) -> Result<Vec<u8>, String> {
        let mut p = keys
            .open(
                io::Cursor::new(stored),
                "x.age",
                o,
                &[RecipientKind::X25519],
            )
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        p.read_to_end(&mut out).map_err(|e| {
            assert!(damage(&e).is_some(), "not reported as damage: {e}");
            e.to_string()
        })?;
        Ok(out)
    }

    #[test]
    fn a_sealed_stream_opens_with_the_key_and_only_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let (file, recipient) = key(dir.path(), "k");
        let (other, _) = key(dir.path(), "o");
        let r = Recipients::parse(&[recipient], &[]).unwrap().unwrap();
        assert_eq!(r.kinds(), &[RecipientKind::X25519]);
        // More than one 64 KiB chunk, and a last chunk exactly full.
        for len in [0, 10, 3 << 16, (1 << 16) * 2 + 7] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let (stored, o) = sealed(&r, &plain);
            let keys = Identities::load(std::slice::from_ref(&file))
                .unwrap()
                .unwrap();
            assert_eq!(
                read(&keys, stored.clone(), &o).unwrap(),
                plain,
                "{len} bytes"
            );
            let wrong = Identities::load(std::slice::from_ref(&other))
                .unwrap()
                .unwrap();
            let e = read(&wrong, stored, &o).unwrap_err();
            assert!(e.contains("none of the identities"), "{e}");
        }
    }

    #[test]
    fn a_flipped_cut_or_extended_object_is_damage_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (file, recipient) = key(dir.path(), "k");
        let r = Recipients::parse(&[recipient], &[]).unwrap().unwrap();
        let keys = Identities::load(&[file]).unwrap().unwrap();
        let plain = vec![7u8; 200_000];
        let (stored, o) = sealed(&r, &plain);
        let header_len = stored.windows(4).position(|w| w == b"\n---").unwrap() + 50;
        for at in [header_len + 10, stored.len() / 2, stored.len() - 1] {
            let mut bad = stored.clone();
            bad[at] ^= 0x20;
            let e = read(&keys, bad, &o).unwrap_err();
            assert!(e.contains("damaged"), "byte {at}: {e}");
        }
        let e = read(&keys, stored[..stored.len() - 100].to_vec(), &o).unwrap_err();
        assert!(e.contains("damaged"), "{e}");
        let mut longer = stored.clone();
        longer.extend_from_slice(b"appended");
        assert!(read(&keys, longer, &o).unwrap_err().contains("damaged"));
        // A whole, valid age file that is not the one the header names (another backup's,
        // or the same data sealed again): age accepts it, the stored sha256 does not.
        let (again, _) = sealed(&r, &plain);
        let e = read(&keys, again, &o).unwrap_err();
        assert!(e.contains("the manifest says"), "{e}");
        // The header's MAC. (A changed recipient stanza reads as "not for these keys": age
        // cannot tell it from another recipient's.)
        let mac = stored.windows(4).position(|w| w == b"\n---").unwrap() + 10;
        let mut bad = stored.clone();
        bad[mac] ^= 0x01;
        let e = read(&keys, bad, &o).unwrap_err();
        assert!(e.contains("damaged"), "{e}");
    }

    #[test]
    fn recipients_come_from_flags_and_files_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (_, a) = key(dir.path(), "a");
        let (_, b) = key(dir.path(), "b");
        let ssh =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsKLqeplhpW+uObz5dvMgjz1OxfM/XXUB+VHtZ6isGN test";
        let file = dir.path().join("r.txt");
        std::fs::write(&file, format!("# team\n\n{b}\n{ssh}\n")).unwrap();
        let r = Recipients::parse(&[a], &[file]).unwrap().unwrap();
        assert_eq!(
            r.kinds(),
            &[RecipientKind::X25519, RecipientKind::SshEd25519]
        );
        assert_eq!(kinds_text(r.kinds()), "x25519, ssh-ed25519");
        assert_eq!(Recipients::parse(&[], &[]).unwrap(), None);

        let e = Recipients::parse(&["age1nope".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--encrypt-to \"age1nope\": not a valid age X25519 recipient"),
            "{e}"
        );
        let e = Recipients::parse(&["AGE-SECRET-KEY-1XYZ".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a recipient age accepts"), "{e}");
        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, "# x\nssh-dss AAAA\n").unwrap();
        let e = Recipients::parse(&[], &[bad]).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "# nobody\n").unwrap();
        let e = Recipients::parse(&[], &[empty]).unwrap_err().to_string();
        assert!(e.contains("names no recipient"), "{e}");
    }

    #[test]
    fn identity_files_that_cannot_work_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "hello\n").unwrap();
        let e = Identities::load(&[junk]).unwrap_err().to_string();
        assert!(e.contains("age identity file"), "{e}");
        let e = Identities::load(&[dir.path().join("missing")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("identity file"), "{e}");
        assert!(Identities::load(&[]).unwrap().is_none());
    }
}

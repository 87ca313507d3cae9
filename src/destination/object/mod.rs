//! Object-storage destinations (S3 and S3-compatibles, Azure Blob, GCS) through `object_store`.
//!
//! The [`Destination`] trait is synchronous because the backup and restore data paths are
//! `Read`/`Write` pipelines on blocking threads. Here the bridge runs the other way: a writer
//! hands full parts over a bounded channel to an async multipart-upload task, and a reader
//! takes ranged chunks from an async download task, so memory is a few parts whatever the
//! archive's size (see [`transfer`]).
//!
//! Atomicity: an archive becomes visible only when its multipart upload completes, which
//! [`ObjectWriter::commit`](super::ObjectWriter::commit) does after the whole stream was
//! accepted; a writer dropped without commit aborts its upload, and
//! [`Destination::abort_incomplete`] aborts every upload still open (after SIGTERM/Ctrl-C).
//! The manifest, written after the archive, remains the commit marker.

mod aws_profile;
pub mod config;
mod transfer;
mod uploads;
pub mod url;

use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use object_store::multipart::MultipartStore;
use object_store::path::Path as StorePath;
use object_store::{MultipartId, ObjectStore, ObjectStoreExt};

use super::{
    Destination, DestinationError, ObjectWriter, StoreOptions, StoredObject, Unfinished,
    UnfinishedWrite,
};
use config::{Built, CredentialSource, Env};
use url::ObjectUrl;

/// What this module needs of a store: plain objects and explicit multipart uploads (whose ids
/// let an interrupt abort them from another thread).
pub trait Backend: ObjectStore + MultipartStore {}
impl<T: ObjectStore + MultipartStore> Backend for T {}

/// S3 and GCS want parts of at least 5 MiB (all but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
pub const MAX_PART_SIZE: u64 = 512 << 20;
/// Default part size: what the AWS CLI uses.
pub const DEFAULT_PART_SIZE: u64 = 8 << 20;
/// Parts of one upload in flight at once.
pub const UPLOAD_CONCURRENCY: usize = 4;
/// Ranged reads in flight at once for one download, and their size.
pub const READ_AHEAD: usize = 2;
pub const READ_CHUNK: u64 = 8 << 20;

/// Open multipart uploads: token → (object path, upload id).
type OpenUploads = Arc<Mutex<HashMap<u64, (StorePath, MultipartId)>>>;

/// Everything needed to word an error about this destination.
#[derive(Debug)]
pub(crate) struct Context {
    pub url: ObjectUrl,
    pub credentials: CredentialSource,
    pub secrets: Vec<String>,
}

pub struct ObjectDest {
    ctx: Arc<Context>,
    store: Arc<dyn Backend>,
    part_size: u64,
    uploads: OpenUploads,
    next_token: AtomicU64,
    store_checksum: bool,
    signer: Option<Arc<dyn object_store::signer::Signer>>,
}

/// Parses and configures an object-storage destination (no request is made, except a
/// one-second probe of an instance-metadata endpoint when nothing else provides credentials).
pub fn open(url: ObjectUrl, opts: &StoreOptions) -> Result<ObjectDest, DestinationError> {
    open_with_env(url, opts, &Env::from_process())
}

pub fn open_with_env(
    url: ObjectUrl,
    opts: &StoreOptions,
    env: &Env,
) -> Result<ObjectDest, DestinationError> {
    let part_size = opts.part_size.unwrap_or(DEFAULT_PART_SIZE);
    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
        return Err(DestinationError::Config(format!(
            "--part-size {} MiB is out of range: object stores need 5 to 512 MiB",
            part_size >> 20
        )));
    }
    StorePath::parse(&url.prefix).map_err(|e| DestinationError::BadUrl {
        url: url.to_string(),
        why: format!("the prefix is not a valid object path: {e}"),
    })?;
    let mut plan = config::plan(&url, env, opts.endpoint.as_deref())
        .map_err(|e| DestinationError::Config(e.0))?;
    if let Some(endpoint) = config::metadata_endpoint(url.provider, &plan) {
        if !config::metadata_reachable(&endpoint) {
            match &mut plan {
                config::Plan::Azure(p) if config::which("az") => config::use_azure_cli(p),
                _ => {
                    return Err(DestinationError::Config(
                        config::unreachable_metadata(&plan, &endpoint, env).0,
                    ))
                }
            }
        }
    }
    let Built {
        store,
        credentials,
        secrets,
        store_checksum,
        signer,
    } = config::build(&url, env, &plan).map_err(|e| DestinationError::Config(e.0))?;
    Ok(ObjectDest {
        ctx: Arc::new(Context {
            url,
            credentials,
            secrets,
        }),
        store,
        part_size,
        uploads: Arc::default(),
        next_token: AtomicU64::new(0),
        store_checksum,
        signer,
    })
}

/// Runs `f` to completion from synchronous code: on a runtime worker thread through
/// `block_in_place` (the multi-threaded runtime moves its other tasks away), on a blocking
/// thread directly.
pub(crate) fn block_on<F: Future>(f: F) -> Result<F::Output, DestinationError> {
    let handle = tokio::runtime::Handle::try_current().map_err(|_| {
        DestinationError::Config("object storage needs the async runtime (internal error)".into())
    })?;
    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
        return Err(DestinationError::Config(
            "object storage needs the multi-threaded runtime (internal error)".into(),
        ));
    }
    Ok(tokio::task::block_in_place(|| handle.block_on(f)))
}

impl Context {
    pub fn locate(&self, key: &str) -> String {
        let mut u = self.url.clone();
        u.prefix = self.url.key(key);
        u.to_string()
    }

    /// Replaces every secret value (and signature-looking query parameters) with `***`.
    pub fn redact(&self, text: &str) -> String {
        redact(text, &self.secrets)
    }

    /// Words a store error for a user: what failed, why in the store's own terms, and what
    /// to check.
    pub fn error(&self, action: &str, key: &str, e: &object_store::Error) -> DestinationError {
        let loc = self.locate(key);
        let raw = e.to_string();
        let detail = self.redact(&summarize(&raw));
        let word = self.url.provider.bucket_word();
        let bucket = &self.url.bucket;
        let code = xml_tag(&raw, "Code").unwrap_or_default();
        let missing_bucket = matches!(
            code.as_str(),
            "NoSuchBucket" | "ContainerNotFound" | "ContainerBeingDeleted"
        ) || raw.contains("The specified bucket does not exist");
        if missing_bucket {
            return DestinationError::Store {
                message: format!(
                    "{} {bucket} does not exist ({action} {loc}); create it first, or fix the name in the URL",
                    capitalize(word)
                ),
                permanent: true,
            };
        }
        let refused = || DestinationError::Store {
            message: format!(
                "the store refused to {action} {loc} with {}: {detail}. Check {}",
                self.credentials.what, self.credentials.fix
            ),
            permanent: true,
        };
        let message = match e {
            object_store::Error::NotFound { .. } => {
                return DestinationError::NotFound {
                    what: "object".into(),
                    path: loc,
                }
            }
            // Fetching credentials failed (metadata endpoint, STS, Entra ID, gcloud's OAuth):
            // before the store was even asked.
            _ if CREDENTIAL_FETCH.iter().any(|h| raw.contains(h)) => {
                return DestinationError::Store {
                    message: format!(
                        "could not get credentials from {} to {action} {loc}: {detail}. Check {}",
                        self.credentials.what, self.credentials.fix
                    ),
                    permanent: true,
                }
            }
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => return refused(),
            _ if AUTH_CODES.contains(&code.as_str())
                || raw.contains("status code: 403")
                || raw.contains("status code: 401") =>
            {
                return refused()
            }
            _ if raw.contains("redirect") && self.url.provider == url::Provider::S3 => format!(
                "{action} {loc} failed: {detail}. The bucket is probably in another region: set AWS_REGION to the bucket's region"
            ),
            _ if !raw.contains("status code:") && raw.contains("HTTP error") => format!(
                "cannot reach the store to {action} {loc}: {detail}. Check the endpoint (--endpoint, AWS_ENDPOINT_URL) and the network"
            ),
            _ => format!("{action} {loc} failed: {detail}"),
        };
        DestinationError::Store {
            message,
            permanent: false,
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn xml_tag(text: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&close)? + start;
    Some(text[start..end].to_string())
}

/// object_store's messages nest every layer ("Generic S3 error: Error performing list
/// request: Error performing GET … in 217ms - Server returned non-2xx status code: 403
/// Forbidden: <?xml …>") and carry the whole XML error body. Keep what a user acts on: the
/// HTTP status, the store's error code and message, and the request.
fn summarize(raw: &str) -> String {
    let status = raw
        .split("status code: ")
        .nth(1)
        .map(|rest| rest.split(':').next().unwrap_or(rest).trim().to_string());
    let request = raw.split("Error performing ").find_map(|part| {
        let mut words = part.split_whitespace();
        let method = words.next()?;
        let url = words.next()?;
        (method.chars().all(|c| c.is_ascii_uppercase()) && url.contains("://"))
            .then(|| format!("{method} {url}"))
    });
    match (status, xml_tag(raw, "Code")) {
        (Some(status), code) => {
            let mut out = status;
            if let Some(code) = code {
                out.push_str(&format!(", {code}"));
                if let Some(msg) = xml_tag(raw, "Message") {
                    out.push_str(&format!(": {}", msg.trim()));
                }
            }
            if let Some(r) = request {
                out.push_str(&format!(" ({r})"));
            }
            out
        }
        // No answer at all (connection refused, DNS, TLS): the transport's words, the request
        // and how often it was tried.
        (None, _) => match (request, raw.rsplit_once(" - ")) {
            (Some(r), Some((head, tail))) => {
                let retries = head
                    .split(", ")
                    .find(|p| p.starts_with("after ") && p.ends_with(" retries"))
                    .map(|p| format!(", {p}"))
                    .unwrap_or_default();
                format!("{} ({r}{retries})", tail.trim())
            }
            _ => raw.to_string(),
        },
    }
}

/// Marks of a failed credential fetch in object_store's messages (its own error texts, and the
/// endpoints that hand out credentials).
const CREDENTIAL_FETCH: &[&str] = &[
    "token request",
    "token response",
    "get-access-token",
    "CreateSession",
    "federated token file",
    "service account file",
    "169.254.169.254",
    "169.254.170.2",
    "metadata.google.internal",
    "://sts.",
    "login.microsoftonline.com",
    "oauth2.googleapis.com",
    "accounts.google.com",
];

/// Error codes of refused credentials or permissions: S3
/// (<https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html>), Azure
/// (<https://learn.microsoft.com/en-us/rest/api/storageservices/common-rest-api-error-codes>).
const AUTH_CODES: &[&str] = &[
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AuthenticationFailed",
    "AuthorizationFailure",
    "AuthorizationPermissionMismatch",
    "InsufficientAccountPermissions",
];

/// Removes secret values and URL signature parameters from `text`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        // Short values ("1", "true") would shred the message and are no secret anyway.
        if s.len() >= 6 {
            out = out.replace(s.as_str(), "***");
        }
    }
    for param in [
        "sig=",
        "X-Amz-Signature=",
        "X-Amz-Credential=",
        "X-Amz-Security-Token=",
        "Signature=",
        "access_token=",
    ] {
        let mut from = 0;
        while let Some(pos) = out[from..].find(param) {
            let start = from + pos + param.len();
            let end = out[start..]
                .find(['&', ' ', ')', '"', '\''])
                .map(|e| start + e)
                .unwrap_or(out.len());
            out.replace_range(start..end, "***");
            from = start + 3;
        }
    }
    out
}

impl ObjectDest {
    fn path(&self, key: &str) -> StorePath {
        StorePath::from(self.ctx.url.key(key))
    }

    /// Whether the store itself checks a SHA-256 of every uploaded request (S3).
    pub fn store_checksum(&self) -> bool {
        self.store_checksum
    }
}

impl Destination for ObjectDest {
    fn describe(&self) -> String {
        self.ctx.url.to_string()
    }

    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, DestinationError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            DestinationError::Config(
                "object storage needs the async runtime (internal error)".into(),
            )
        })?;
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(transfer::UploadWriter::start(
            handle,
            transfer::Upload {
                store: self.store.clone(),
                path: self.path(key),
                key: key.to_string(),
                ctx: self.ctx.clone(),
                base_part: self.part_size as usize,
                concurrency: UPLOAD_CONCURRENCY,
                uploads: self.uploads.clone(),
                token,
            },
        )))
    }

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, DestinationError> {
        match transfer::DownloadReader::open(
            self.store.clone(),
            self.path(key),
            key,
            self.ctx.clone(),
        ) {
            Ok(reader) => Ok(Box::new(reader)),
            // A HEAD has no body to say whether the object or the whole bucket is missing.
            Err(e @ DestinationError::NotFound { .. }) => Err(self.check().err().unwrap_or(e)),
            Err(e) => Err(e),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, DestinationError> {
        let root = (!self.ctx.url.prefix.is_empty())
            .then(|| StorePath::from(self.ctx.url.prefix.as_str()));
        let store = self.store.clone();
        let listed =
            block_on(async move { store.list(root.as_ref()).try_collect::<Vec<_>>().await })?
                .map_err(|e| self.ctx.error("list", "", &e))?;
        let mut keys: Vec<String> = listed
            .iter()
            .filter_map(|m| {
                self.ctx
                    .url
                    .relative(m.location.as_ref())
                    .map(str::to_string)
            })
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn locate(&self, key: &str) -> String {
        self.ctx.locate(key)
    }

    fn abort_incomplete(&self) {
        let open: Vec<(StorePath, MultipartId)> = self
            .uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, v)| v)
            .collect();
        if open.is_empty() {
            return;
        }
        let store = self.store.clone();
        let _ = block_on(async move {
            let aborts = open.iter().map(|(path, id)| {
                let store = store.clone();
                async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(15),
                        store.abort_multipart(path, id),
                    )
                    .await;
                }
            });
            futures::future::join_all(aborts).await;
        });
    }

    fn list_stored(&self) -> Result<Vec<StoredObject>, DestinationError> {
        let root = (!self.ctx.url.prefix.is_empty())
            .then(|| StorePath::from(self.ctx.url.prefix.as_str()));
        let store = self.store.clone();
        let listed =
            block_on(async move { store.list(root.as_ref()).try_collect::<Vec<_>>().await })?
                .map_err(|e| self.ctx.error("list", "", &e))?;
        let mut out: Vec<StoredObject> = listed
            .into_iter()
            .filter_map(|m| {
                Some(StoredObject {
                    key: self.ctx.url.relative(m.location.as_ref())?.to_string(),
                    size: m.size,
                    modified: m.last_modified,
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn list_unfinished(&self) -> Result<Unfinished, DestinationError> {
        match (self.ctx.url.provider, &self.signer) {
            (url::Provider::S3, Some(signer)) => {
                let signer = signer.clone();
                let ctx = self.ctx.clone();
                Ok(Unfinished::Uploads(block_on(async move {
                    uploads::list_s3(signer.as_ref(), &ctx).await
                })??))
            }
            (url::Provider::Azure, _) => Ok(Unfinished::NotListable {
                why: "Azure keeps the blocks of an unfinished upload uncommitted and invisible, and deletes them itself 7 days after they were written (https://learn.microsoft.com/en-us/rest/api/storageservices/put-block#remarks); there is nothing to list or abort".into(),
            }),
            _ => Ok(Unfinished::NotListable {
                why: "open multipart uploads are not listed for gs:// buckets; give the bucket a lifecycle rule with the AbortIncompleteMultipartUpload action (https://cloud.google.com/storage/docs/lifecycle#abort-mpu)".into(),
            }),
        }
    }

    fn remove(&self, key: &str) -> Result<(), DestinationError> {
        let store = self.store.clone();
        let path = self.path(key);
        match block_on(async move { store.delete(&path).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.ctx.error("delete", key, &e)),
        }
    }

    fn discard(&self, write: &UnfinishedWrite) -> Result<(), DestinationError> {
        let store = self.store.clone();
        let path = self.path(&write.key);
        let id: MultipartId = write.handle.clone();
        block_on(async move { store.abort_multipart(&path, &id).await })?.map_err(|e| {
            self.ctx
                .error("abort the multipart upload of", &write.key, &e)
        })
    }

    fn check(&self) -> Result<(), DestinationError> {
        let root = (!self.ctx.url.prefix.is_empty())
            .then(|| StorePath::from(self.ctx.url.prefix.as_str()));
        let store = self.store.clone();
        block_on(async move { store.list_with_delimiter(root.as_ref()).await })?
            .map(|_| ())
            .map_err(|e| self.ctx.error("list", "", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_signatures_are_redacted() {
        let secrets = vec!["wJalrXUtnFEMI/K7MDENG".to_string(), "1".to_string()];
        let text = "denied for key wJalrXUtnFEMI/K7MDENG at https://a.blob.core.windows.net/c/x?sv=2022&sig=abc%2Fdef&se=1 and X-Amz-Signature=deadbeef";
        let r = redact(text, &secrets);
        assert!(!r.contains("wJalrXUtnFEMI"), "{r}");
        assert!(!r.contains("abc%2Fdef"), "{r}");
        assert!(!r.contains("deadbeef"), "{r}");
        assert!(r.contains("sig=***&se=1"), "{r}");
        assert!(r.contains("sv=2022"), "{r}");
    }

    #[test]
    fn store_errors_keep_the_code_and_message() {
        let raw = "Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>";
        assert_eq!(
            summarize(raw),
            "403 Forbidden, InvalidAccessKeyId: The AWS Access Key Id you provided does not exist in our records."
        );
        let unreachable = "Generic S3 error: Error performing list request: Error performing GET http://127.0.0.1:1/bkt?list-type=2 in 2.32s, after 8 retries, max_retries: 8, retry_timeout: 180s  - HTTP error: error sending request";
        assert_eq!(
            summarize(unreachable),
            "HTTP error: error sending request (GET http://127.0.0.1:1/bkt?list-type=2, after 8 retries)"
        );
        let ctx = Context {
            url: url::parse("s3://bucket-a").unwrap().unwrap(),
            credentials: CredentialSource {
                what: "the instance profile".into(),
                fix: "the role".into(),
            },
            secrets: vec![],
        };
        let imds = object_store::Error::Generic {
            store: "S3",
            source: "Error performing PUT http://169.254.169.254/latest/api/token in 1s - HTTP error: error sending request".into(),
        };
        let e = ctx.error("list", "", &imds).to_string();
        assert!(
            e.starts_with("could not get credentials from the instance profile"),
            "{e}"
        );
        let page2 = object_store::Error::Generic {
            store: "S3",
            source: "Error performing GET http://127.0.0.1:1/b?list-type=2&continuation-token=abc in 1s - Server returned non-2xx status code: 500 Internal Server Error: <Error><Code>InternalError</Code><Message>boom</Message></Error>".into(),
        };
        let e = ctx.error("list", "", &page2).to_string();
        assert!(
            e.starts_with(
                "list s3://bucket-a failed: 500 Internal Server Error, InternalError: boom"
            ),
            "{e}"
        );
        let nested = format!("Generic S3 error: Error performing list request: Error performing GET http://127.0.0.1:1/b?list-type=2 in 21ms - {raw}");
        assert_eq!(
            summarize(&nested),
            "403 Forbidden, InvalidAccessKeyId: The AWS Access Key Id you provided does not exist in our records. (GET http://127.0.0.1:1/b?list-type=2)"
        );
        assert_eq!(summarize("plain"), "plain");
    }
}
